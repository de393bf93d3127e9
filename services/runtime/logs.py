"""One JSON object per line for everything a process logs: structlog's own lines and the
standard library's (uvicorn, pymongo, nats-py, asyncio) alike, with the same fields:
``timestamp``, ``level``, ``event``, ``logger``, ``service``, ``job_id`` / ``persona_id``
where bound (structlog's context variables, merged into both), and ``trace_id`` / ``span_id``
inside a recording span (:mod:`services.runtime.tracing`)."""

from __future__ import annotations

import logging
import sys

import structlog

from services.runtime.redaction import redact
from services.runtime.tracing import log_ids


def _redact(_: object, __: str, event_dict: dict) -> dict:
    """Never let an API key or a URL's password reach a log line, whatever carried it there."""
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = redact(value)
    return event_dict


def add_trace_ids(_: object, __: str, event_dict: dict) -> dict:
    """The current span's ``trace_id`` / ``span_id``, when tracing records one: a line leads to its trace."""
    event_dict.update(log_ids())
    return event_dict


def _shared_processors() -> list:
    return [
        structlog.contextvars.merge_contextvars,
        add_trace_ids,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def _promptgen_logger(*args: object) -> logging.Logger:
    name = args[0] if args and isinstance(args[0], str) else ""
    return logging.getLogger(name if name.startswith("promptgen") else "promptgen")


def configure_logging(service: str, level: str = "info", *, stream=None, cache: bool = True) -> None:
    """``cache``: each logger keeps the configuration it first used (faster). A test that
    configures logging for a while and then resets it passes False, or the module-level loggers
    used meanwhile would keep writing through this configuration for the rest of the process."""
    stream = stream or sys.stdout
    lvl = logging.getLevelName(level.upper())
    if not isinstance(lvl, int):
        lvl = logging.INFO
    # Every line, ours or a library's, goes through one handler and one renderer.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _redact,
            structlog.processors.JSONRenderer(),
        ],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # libraries say too much at info; ours (every structlog logger is under "promptgen") follow the level
    root.setLevel(max(lvl, logging.WARNING))
    logging.getLogger("promptgen").setLevel(lvl)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []  # uvicorn's own handlers would print plain text
        logging.getLogger(name).propagate = True
    structlog.configure(
        processors=[
            *_shared_processors(),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=_promptgen_logger,
        cache_logger_on_first_use=cache,
    )
    structlog.contextvars.bind_contextvars(service=service)
