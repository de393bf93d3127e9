"""One decision of a job's end at a time: the follower and the sweep both decide."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from services.projector.job_manager import JobManager


async def test_decisions_of_one_job_never_overlap_however_they_queue():
    """Three decisions of one job: the second waits on the first; the third comes as the first
    has just released the lock, before the second has woken. A lock taken out of the table then
    (it reads unlocked) would let the third run beside the second."""
    manager = JobManager.__new__(JobManager)  # only the deciding parts are used
    manager._deciding = {}
    manager.settled = lambda job_id: False  # type: ignore[method-assign]
    running, peak = 0, 0
    first_done = asyncio.Event()

    async def decide_end(job_id, now, live):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1

    manager._decide_end = decide_end  # type: ignore[method-assign]
    now = datetime.now(UTC)
    first = asyncio.create_task(manager._end_if_over("j", now, True))
    await asyncio.sleep(0)
    second = asyncio.create_task(manager._end_if_over("j", now, True))
    first.add_done_callback(lambda _: first_done.set())
    await first_done.wait()
    third = asyncio.create_task(manager._end_if_over("j", now, True))  # the second not yet woken
    await asyncio.gather(second, third)
    assert peak == 1 and manager._deciding == {}
