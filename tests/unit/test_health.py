"""Readiness: what it checks, with doubles for what answers (the servers themselves: the
integration and end-to-end tests)."""

from __future__ import annotations

from services.runtime.health import Health, mongo_answers


class _Collection:
    def __init__(self, error: Exception | None) -> None:
        self.error = error

    async def find_one(self, *args, **kwargs):
        if self.error is not None:
            raise self.error
        return None


class _Database:
    """A MongoDB that answers ping, and reads or fails to."""

    def __init__(self, read_error: Exception | None = None) -> None:
        self.read_error = read_error

    async def command(self, name: str) -> dict:
        return {"ok": 1}

    def __getitem__(self, name: str) -> _Collection:
        return _Collection(self.read_error)


class _Models:
    def __init__(self, db: _Database) -> None:
        self.db = db


async def test_a_mongodb_that_answers_ping_but_cannot_read_is_not_ready():
    """SecantusDB, its data directory removed, answered ping while every query failed: readiness
    said mongodb true, status ok."""
    healthy = Health(ready_checks={"mongodb": lambda: mongo_answers(_Models(_Database()))})
    assert await healthy.ready() == (True, {"mongodb": True})
    broken = _Models(_Database(read_error=RuntimeError("WT_PANIC: WiredTiger library panic")))
    failing = Health(ready_checks={"mongodb": lambda: mongo_answers(broken)})
    assert await failing.ready() == (False, {"mongodb": False})
