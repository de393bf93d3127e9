"""Running a service process: stop on SIGTERM / SIGINT, announce readiness."""

from __future__ import annotations

import asyncio
import signal
import sys

import structlog


def stop_event() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT, so a service can drain and exit cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def announce_ready(**fields: object) -> None:
    """One JSON line saying the service is ready, whatever the log level: the supervisor
    of `promptgen up` (and any orchestrator reading logs) waits for this exact event."""
    logger = structlog.wrap_logger(
        structlog.PrintLogger(sys.stdout),
        wrapper_class=structlog.BoundLogger,  # not the level-filtering one: this line always goes out
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
    )
    logger.info("service_ready", **fields)
