"""Documents for other services: the event log's AsyncAPI description."""

from __future__ import annotations

from functools import cache
from importlib.metadata import version
from typing import Any

from fastapi import APIRouter

from contracts import asyncapi

router = APIRouter(tags=["operations"])


@cache
def _document() -> dict[str, Any]:
    return asyncapi.document(version("promptgen"))


@router.get("/asyncapi.json", summary="The event log's AsyncAPI 3 document")
async def asyncapi_document() -> dict[str, Any]:
    """Channels (subjects), messages (events with their JSON Schemas), and how the log is kept:
    what a service in any language needs to follow prompt events."""
    return _document()
