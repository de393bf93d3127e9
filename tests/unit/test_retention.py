"""The projector's retention sweep: every round deletes every job view past its time, in rounds
of a bounded size, and the sweep ends when told to."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from services.projector import retention
from services.projector.retention import drop_expired_views
from services.testing import memory_read_models

NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)


async def test_a_sweep_drops_every_expired_view_in_bounded_rounds_and_stops_when_told(monkeypatch):
    monkeypatch.setattr(retention, "JOBS_PER_ROUND", 2)
    models = memory_read_models()
    await models.ensure_indexes()
    for n in range(5):
        await models.jobs.insert_one({"_id": f"old{n}", "expire_at": NOW - timedelta(hours=n)})
        await models.job_personas.insert_one({"_id": f"old{n}:p", "job_id": f"old{n}", "order": 0})
    await models.jobs.insert_one({"_id": "kept", "expire_at": NOW + timedelta(days=1)})
    counting = _Counting(models)
    stop = asyncio.Event()
    sweeper = asyncio.create_task(drop_expired_views(counting, stop, clock=lambda: NOW, every=3600))
    async with asyncio.timeout(10):
        await counting.all_dropped(5)
    stop.set()
    async with asyncio.timeout(10):
        await sweeper  # waiting its interval out, it ends when stopped
    assert counting.rounds == [2, 2, 1]  # a round of fewer than the bound: the sweep waits for the next
    assert [d["_id"] async for d in models.jobs.find({})] == ["kept"]
    assert await models.job_personas.count_documents({}) == 0


class _Counting:
    """The read models, noting how many jobs each round dropped."""

    def __init__(self, models) -> None:
        self.models, self.rounds = models, []
        self.changed = asyncio.Event()

    async def drop_expired_jobs(self, now, limit=100):
        n = await self.models.drop_expired_jobs(now, limit)
        self.rounds.append(n)
        self.changed.set()
        return n

    async def all_dropped(self, total: int) -> None:
        while sum(self.rounds) < total:
            self.changed.clear()
            await self.changed.wait()


async def test_a_round_waits_for_what_holds_the_fold():
    """A rebuild writes a job's document before its persona documents: a round between the two
    would leave persona documents without their job. Each round holds the fold's lock."""
    models = memory_read_models()
    await models.jobs.insert_one({"_id": "old", "expire_at": NOW - timedelta(days=1)})
    counting, fold_lock, stop = _Counting(models), asyncio.Lock(), asyncio.Event()
    await fold_lock.acquire()  # a rebuild merging
    sweeper = asyncio.create_task(drop_expired_views(counting, stop, exclusive=fold_lock, clock=lambda: NOW,
                                                     every=3600))
    try:
        for _ in range(20):
            await asyncio.sleep(0)  # the sweep runs as far as it can
        assert counting.rounds == [] and await models.jobs.count_documents({}) == 1
        fold_lock.release()
        async with asyncio.timeout(10):
            await counting.all_dropped(1)
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await sweeper
    assert await models.jobs.count_documents({}) == 0
