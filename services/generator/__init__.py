"""The generator service: a dispatcher that fans jobs out into per-persona work,
and workers that write each persona's system prompt with an LLM."""
