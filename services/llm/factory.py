"""Which provider runs, decided once per process from settings."""

from __future__ import annotations

from services.llm.base import Provider
from services.llm.offline import OfflineProvider
from services.settings import Settings


def build_provider(settings: Settings) -> Provider:
    if settings.provider_name == "openai":
        from services.llm.openai_provider import OpenAIProvider

        return OpenAIProvider(settings)
    if settings.provider_name != "offline":
        raise ValueError(f"PROMPTGEN_PROVIDER must be 'openai' or 'offline', not {settings.provider_name!r}")
    return OfflineProvider()
