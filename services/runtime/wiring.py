"""What every composition root does alike: use the adapter it was given, or build the
production one and register how to close it.

Each process's ``bootstrap`` (gateway, generator, projector) calls these with an
:class:`~contextlib.AsyncExitStack` that closes, in reverse order, only what it built.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from services.adapters.event_log import EventLog
from services.adapters.llm.base import Provider
from services.adapters.llm.factory import build_provider
from services.adapters.ports import EventLogPort, ReadModelsPort
from services.adapters.read_models import open_read_models
from services.runtime.settings import Settings
from services.runtime.tracing import start_tracing


async def event_log_for(settings: Settings, name: str, stack: AsyncExitStack,
                        given: EventLogPort | None = None, *, ensure_stream: bool = True) -> EventLogPort:
    """``ensure_stream`` False: the stream is neither made nor updated here (the caller does it)."""
    if given is not None:
        return given
    event_log = await EventLog.connect(settings, name, ensure_stream=ensure_stream)
    stack.push_async_callback(event_log.close)
    return event_log


def models_for(settings: Settings, stack: AsyncExitStack, given: ReadModelsPort | None = None) -> ReadModelsPort:
    if given is not None:
        return given
    models, close = open_read_models(settings)
    stack.push_async_callback(close)
    return models


def provider_for(settings: Settings, stack: AsyncExitStack, given: Provider | None = None) -> Provider:
    if given is not None:
        return given
    provider = build_provider(settings)
    stack.push_async_callback(provider.aclose)
    return provider


def tracing_for(service: str, stack: AsyncExitStack) -> None:
    """Tracing for ``service`` (off unless the OTEL_* variables say otherwise), shut down with
    ``stack``: pushed first, so closed last, it flushes every span the process made."""
    traces = start_tracing(service)
    stack.push_async_callback(asyncio.to_thread, traces.shutdown)
