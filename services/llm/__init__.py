"""LLM providers behind one small interface (:class:`services.llm.base.Provider`)."""
