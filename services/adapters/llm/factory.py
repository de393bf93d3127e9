"""Which provider runs, decided once per process from settings."""

from __future__ import annotations

from services.adapters.llm.base import Provider
from services.adapters.llm.offline import OfflineProvider
from services.runtime.settings import Settings


class LLMConfigError(ValueError):
    """A configuration the LLM provider cannot work with: the process must not start."""


def check_llm_config(settings: Settings) -> None:
    """Refuse, before anything starts, a configuration whose every LLM call would fail, or
    that would quietly serve offline prompts where a real model was meant."""
    name = settings.provider_name
    if name not in ("openai", "offline"):
        raise LLMConfigError(f"PROMPTGEN_PROVIDER must be 'openai' or 'offline', not {name!r}")
    if name == "openai" and not settings.openai_api_key and not settings.openai_base_url:
        raise LLMConfigError(
            "PROMPTGEN_PROVIDER=openai but no API key: set OPENAI_API_KEY, or OPENAI_API_KEY_FILE "
            "to a file holding it (for a self-hosted OpenAI-compatible server that needs no key, "
            "set OPENAI_BASE_URL instead)"
        )


def build_provider(settings: Settings) -> Provider:
    check_llm_config(settings)
    if settings.provider_name == "openai":
        from services.adapters.llm.openai_provider import OpenAIProvider

        return OpenAIProvider(settings)
    return OfflineProvider()
