"""Running a service process: stop on SIGTERM / SIGINT, announce readiness."""

from __future__ import annotations

import asyncio
import signal

import structlog

log = structlog.get_logger()


def stop_event() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT, so a service can drain and exit cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def announce_ready(**fields: object) -> None:
    # The supervisor of `promptgen up` waits for this exact event name.
    log.info("service_ready", **fields)
