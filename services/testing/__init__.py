"""Test doubles: the event log and the read models in memory, for tests without servers.

They implement :mod:`services.adapters.ports` and are held to the real adapters by one contract
suite (``tests/contract/``), run against both. What only a real server can show
(redelivery after a crash, durable consumers across restarts, the dedup window over time,
R3 clusters, MongoDB's refusals of hostile documents) stays tested on real servers.

The doubles are imported on first use, not with the package: ``promptgen mock-llm``
(:mod:`services.testing.mock_llm`) runs where mongomock, a test dependency, is not
installed, as in the container image.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.testing.clock import ManualClock
    from services.testing.memory_log import MemoryEventLog
    from services.testing.memory_models import memory_read_models

__all__ = ["ManualClock", "MemoryEventLog", "memory_read_models"]

_HOMES = {
    "ManualClock": "services.testing.clock",
    "MemoryEventLog": "services.testing.memory_log",
    "memory_read_models": "services.testing.memory_models",
}


def __getattr__(name: str) -> object:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
