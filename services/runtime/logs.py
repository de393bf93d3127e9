"""structlog: one JSON object per line, with job_id / persona_id bound where known."""

from __future__ import annotations

import logging
import re
import sys

import structlog

_SECRET = re.compile(r"(sk-[A-Za-z0-9_-]{6,}|Bearer\s+[A-Za-z0-9._-]+)")


def _redact(_: object, __: str, event_dict: dict) -> dict:
    """Never let an API key reach a log line, whatever carried it there."""
    for key, value in event_dict.items():
        if isinstance(value, str) and ("sk-" in value or "Bearer" in value):
            event_dict[key] = _SECRET.sub("[redacted]", value)
    return event_dict


def configure_logging(service: str, level: str = "info", *, stream=None) -> None:
    stream = stream or sys.stdout
    lvl = logging.getLevelName(level.upper())
    if not isinstance(lvl, int):
        lvl = logging.INFO
    logging.basicConfig(stream=stream, level=max(lvl, logging.WARNING), format="%(message)s")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
