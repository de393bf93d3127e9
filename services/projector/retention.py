"""Finished job views leave MongoDB after their retention; their events stay in the log.

A job document carries when it leaves (``expire_at``: the retention after its deadline, brought
forward to the retention after its end). Every ``every`` seconds the projector deletes the views
of the jobs past it, their persona documents first. Deleting twice (two projectors, a sweep
that stopped half-way) changes nothing.

Each round holds the fold's lock: a rebuild writes a job's document before its persona
documents, and a round between the two would leave persona documents whose job is gone.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from services.adapters.ports import ReadModelsPort
from services.runtime.lifecycle import Clock, utc_now

log = structlog.get_logger()

RETENTION_SWEEP_SECONDS = 60.0
JOBS_PER_ROUND = 20  # the fold waits while a round runs


async def drop_expired_views(models: ReadModelsPort, stop: asyncio.Event, *,
                             exclusive: contextlib.AbstractAsyncContextManager | None = None, clock: Clock = utc_now,
                             every: float = RETENTION_SWEEP_SECONDS) -> None:
    """Until ``stop``: each ``every`` seconds, delete every job view past its retention, in rounds
    of at most :data:`JOBS_PER_ROUND` jobs, each holding ``exclusive`` (the fold's lock)."""

    async def one_round() -> int:
        async with exclusive or contextlib.nullcontext():
            return await models.drop_expired_jobs(clock(), JOBS_PER_ROUND)

    while not stop.is_set():
        dropped = 0
        while (n := await one_round()) > 0:
            dropped += n
            if n < JOBS_PER_ROUND or stop.is_set():
                break
        if dropped:
            log.info("job_views_dropped", jobs=dropped)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)
