"""Test doubles: the event log and the read models in memory, for tests without servers.

They implement :mod:`services.adapters.ports` and are held to the real adapters by one contract
suite (``tests/contract/``), run against both. What only a real server can show
(redelivery after a crash, durable consumers across restarts, the dedup window over time,
R3 clusters, MongoDB's refusals of hostile documents) stays tested on real servers.
"""

from services.testing.clock import ManualClock
from services.testing.memory_log import MemoryEventLog
from services.testing.memory_models import memory_read_models

__all__ = ["ManualClock", "MemoryEventLog", "memory_read_models"]
