"""Each contract test runs once per adapter: the real one (on the servers tests/conftest.py
starts) and the in-memory one. Only the real runs start servers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from services.runtime.settings import Settings
from services.testing import MemoryEventLog, memory_read_models


@pytest_asyncio.fixture
async def memory_event_log() -> AsyncIterator[MemoryEventLog]:
    log = MemoryEventLog(Settings(provider="offline"))
    yield log
    await log.close()


@pytest.fixture(params=["jetstream", "memory"])
def any_event_log(request):
    """The event log under test: ``EventLog`` on a fresh nats-server, or ``MemoryEventLog``."""
    return request.getfixturevalue("event_log" if request.param == "jetstream" else "memory_event_log")


@pytest.fixture
def mongomock_models():
    return memory_read_models()


@pytest.fixture(params=["mongodb", "mongomock"])
def any_models(request):
    """The read models under test: ``ReadModels`` on a MongoDB-wire server, or on mongomock."""
    return request.getfixturevalue("models" if request.param == "mongodb" else "mongomock_models")
