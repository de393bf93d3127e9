"""LLM providers behind one small interface (:class:`services.adapters.llm.base.Provider`)."""
