"""`promptgen asyncapi`: the event log's AsyncAPI document, written from the contracts."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

from contracts import asyncapi

COMMITTED = Path(asyncapi.__file__).with_name("asyncapi.json")


def current() -> str:
    return asyncapi.render(version("promptgen"))


def write(path: Path = COMMITTED) -> Path:
    path.write_text(current())
    return path
