"""Per-tenant cost controls, the same at every gateway: requests per minute, jobs in flight,
personas per day. Past a limit the request is answered ``429`` with ``Retry-After`` before
anything is published.

The counts live in the JetStream key-value bucket ``promptgen_tenant_quotas``, two entries
per tenant, each changed by compare-and-set on its revision (``services/adapters/compare_and_set.py``,
as the LLM's shared limits are), so two gateways racing for the last slot never both win it:

* ``rate.<tenant>``: requests per minute as GCRA ("theoretical arrival time"): a burst of up
  to the limit, then one request every ``60 / limit`` seconds. Only requests that write
  (scopes ``jobs:write`` and ``scenarios:write``: they publish, and most call the LLM) count.
* ``jobs.<tenant>``: the jobs in flight (job id -> deadline) and today's (UTC) personas. A job
  leaves the set once its view in the read models has ended, or once its deadline passed (the
  job manager expires it then), so no message has to come back to free a slot; a job whose
  request could not be published gives its slot and personas back at once.

* ``limits.<tenant>``: the tenant's own limits where they differ from the settings'
  (``promptgen keys limits TENANT``), read again at most every few seconds.

With auth off (loopback, no keys) there is no tenant to share fairly: nothing is limited.
A limit of 0 is no limit.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta

import structlog

from contracts.events import JobRequested
from services.adapters.api_keys import TENANT_PATTERN
from services.adapters.compare_and_set import change_entry, read_entry
from services.adapters.ports import EventLogPort, KeyValue, ReadModelsPort
from services.gateway.auth import Caller
from services.gateway.errors import ApiError
from services.gateway.jobs import finished_seq
from services.runtime.lifecycle import Clock
from services.runtime.settings import Settings

BUCKET = "promptgen_tenant_quotas"
LIMITS = ("requests_per_minute", "jobs_in_flight", "personas_per_day")
OVERRIDES_SECONDS = 5.0  # how long a gateway uses a tenant's limits before reading them again
JOBS_RETRY_AFTER = 5  # seconds: a job in flight may end at any moment, and the read model shows it soon after
# Without a limit on jobs in flight, how many of a tenant's latest jobs are kept, each until its
# deadline, only so that one asked for again is counted once: the shared entry stays small.
RECENT_JOBS = 64
log = structlog.get_logger()


@dataclass(frozen=True)
class TenantLimits:
    requests_per_minute: int = 0
    jobs_in_flight: int = 0
    personas_per_day: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> TenantLimits:
        return cls(settings.tenant_requests_per_minute, settings.tenant_jobs_in_flight,
                   settings.tenant_personas_per_day)


def with_overrides(limits: TenantLimits, overrides: dict) -> TenantLimits:
    """``limits`` with a tenant's own values. Tolerant: an unknown name or a value that is not a
    count (a newer or broken writer's) is ignored."""
    valid = {name: value for name, value in overrides.items()
             if name in LIMITS and type(value) is int and value >= 0}
    return replace(limits, **valid)


@dataclass(frozen=True)
class Refusal:
    limit: str  # requests_per_minute, jobs_in_flight, personas_per_day
    detail: str
    retry_after: float

    def error(self) -> ApiError:
        seconds = max(1, math.ceil(self.retry_after))
        return ApiError(429, f"{self.limit}_exceeded", f"{self.detail}; try again in {seconds} s",
                        field=self.limit, headers={"Retry-After": str(seconds)})


class _Refused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        self.refusal = refusal


# --- the decisions, pure ---------------------------------------------------------------------


def take_request(tat: float, now: float, per_minute: int) -> tuple[float, Refusal | None]:
    """GCRA: the new theoretical arrival time, or a refusal (and the time unchanged)."""
    interval = 60.0 / per_minute
    tolerance = 60.0 - interval  # a burst of ``per_minute`` requests, then one per interval
    start = max(tat, now)
    if start - now > tolerance:
        return tat, Refusal("requests_per_minute",
                            f"This tenant may make {per_minute} writing requests per minute",
                            start - tolerance - now)
    return start + interval, None


@dataclass
class TenantJobs:
    jobs: dict[str, float] = field(default_factory=dict)  # in flight: job id -> deadline (epoch seconds)
    day: str = ""  # the UTC day ``personas`` counts
    personas: int = 0

    @classmethod
    def read(cls, state: dict) -> TenantJobs:
        """Tolerant: what a newer gateway may have added is ignored, and what is not of its type
        (a broken writer's) is read as empty, so one bad entry cannot stop a tenant's jobs."""
        jobs = state.get("jobs")
        personas, day = state.get("personas"), state.get("day")
        return cls(jobs={str(j): float(d) for j, d in jobs.items() if type(d) in (int, float)}
                   if isinstance(jobs, dict) else {},
                   day=day if isinstance(day, str) else "",
                   personas=personas if type(personas) is int and personas >= 0 else 0)

    def as_of(self, now: datetime) -> TenantJobs:
        """Without the jobs past their deadline, and with a fresh count on a new day."""
        today = now.date().isoformat()
        return TenantJobs(jobs={j: d for j, d in self.jobs.items() if d > now.timestamp()}, day=today,
                          personas=self.personas if self.day == today else 0)


def seconds_to_midnight(now: datetime) -> float:
    tomorrow = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=now.tzinfo)
    return (tomorrow - now).total_seconds()


def admit_job(state: TenantJobs, job: JobRequested, limits: TenantLimits, now: datetime) -> Refusal | None:
    """Whether ``job`` fits (``state`` is as of ``now``, ended jobs already left); if so, counts it.
    A job is counted once, by its id: asked for again while it holds its slot (an Idempotency-Key's
    or a retry's request at the same time, or sent again after a 503), it is admitted and nothing
    more is counted. Without a limit on jobs in flight, only the ``RECENT_JOBS`` latest are kept
    for that."""
    if job.job_id in state.jobs:
        return None
    personas = len(job.personas)
    if limits.jobs_in_flight and len(state.jobs) >= limits.jobs_in_flight:
        return Refusal("jobs_in_flight",
                       f"This tenant has {len(state.jobs)} of {limits.jobs_in_flight} jobs running",
                       JOBS_RETRY_AFTER)
    if limits.personas_per_day and state.personas + personas > limits.personas_per_day:
        left = max(0, limits.personas_per_day - state.personas)
        return Refusal("personas_per_day",
                       f"This tenant may generate prompts for {limits.personas_per_day} personas per day (UTC); "
                       f"{left} left today, this job has {personas}", seconds_to_midnight(now))
    state.jobs[job.job_id] = job.deadline.timestamp()
    if not limits.jobs_in_flight:  # kept only to be counted once: not one entry for every job
        for earlier in list(state.jobs)[:-RECENT_JOBS]:
            del state.jobs[earlier]
    state.personas += personas
    return None


class JobStoredBefore(Exception):
    """The job's request was stored already, by another request for the same job (an
    Idempotency-Key's or a retry's, at the same time): the job is counted once, whichever
    request counted it."""


# --- the shared state ------------------------------------------------------------------------


class TenantQuotas:
    def __init__(self, kv: KeyValue, models: ReadModelsPort, limits: TenantLimits, clock: Clock,
                 event_log: EventLogPort | None = None) -> None:
        self.kv, self.models, self.limits, self.clock = kv, models, limits, clock
        self.event_log = event_log  # where a job's end is before the projector has applied it
        self._tenant_limits: dict[str, tuple[float, TenantLimits]] = {}  # tenant -> (read again after, limits)

    async def limits_for(self, tenant: str) -> TenantLimits:
        """The settings' limits with the tenant's own (``limits.<tenant>``), read at most every
        ``OVERRIDES_SECONDS``: a change reaches every gateway within that."""
        now = time.monotonic()
        cached = self._tenant_limits.get(tenant)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            overrides, _ = await read_entry(self.kv, f"limits.{tenant}")
        except ValueError as exc:  # not JSON: the settings' limits, and say so
            log.warning("tenant_limits_unreadable", tenant=tenant, error=str(exc)[:200])
            overrides = {}
        limits = with_overrides(self.limits, overrides if isinstance(overrides, dict) else {})
        self._tenant_limits[tenant] = (now + OVERRIDES_SECONDS, limits)
        return limits

    @classmethod
    async def open(cls, event_log: EventLogPort, models: ReadModelsPort, settings: Settings,
                   clock: Clock) -> TenantQuotas:
        kv = await event_log.key_value(BUCKET, history=1, replicas=settings.replicas)
        return cls(kv, models, TenantLimits.from_settings(settings), clock, event_log)

    async def _within(self, caller: Caller, key: str, change: Callable[[dict], Awaitable[Refusal | None]],
                      **fields: object) -> None:
        """Apply ``change`` to the entry ``key`` by compare-and-set, or refuse (429) writing nothing."""

        async def refusing(state: dict) -> None:
            refusal = await change(state)
            if refusal is not None:
                raise _Refused(refusal)

        try:
            await change_entry(self.kv, key, refusing)
        except _Refused as refused:
            refusal = refused.refusal
            log.warning("tenant_limit_reached", tenant=caller.tenant, key_id=caller.key_id, limit=refusal.limit,
                        retry_after=round(refusal.retry_after, 3), **fields)
            raise refusal.error() from None

    async def take_request(self, caller: Caller) -> None:
        """Count one writing request of the caller's tenant, or refuse it (429)."""
        if caller.key_id is None:
            return
        per_minute = (await self.limits_for(caller.tenant)).requests_per_minute
        if not per_minute:
            return

        async def take(state: dict) -> Refusal | None:
            tat, refusal = take_request(state.get("tat", 0.0), self.clock().timestamp(), per_minute)
            state["tat"] = tat
            return refusal

        await self._within(caller, f"rate.{caller.tenant}", take)

    async def _ended(self, job_ids: list[str]) -> set[str]:
        """The jobs among ``job_ids`` that ended: by their view, or else by the log (a client may
        have seen a job's end, and start the next job, before the projector has applied it)."""
        query = {"_id": {"$in": job_ids}, "status": {"$ne": "processing"}}
        ended = {d["_id"] async for d in self.models.jobs.find(query, ["_id"])}
        if self.event_log is not None:
            for job_id in set(job_ids) - ended:
                if await finished_seq(self.event_log, job_id) is not None:
                    ended.add(job_id)
        return ended

    @asynccontextmanager
    async def job(self, caller: Caller, job: JobRequested) -> AsyncIterator[None]:
        """A slot for ``job`` and its personas while its request is published, or 429. If the
        block fails (nothing was published) the slot and the personas are given back."""
        limits = await self.limits_for(caller.tenant) if caller.key_id is not None else TenantLimits()
        if not (limits.jobs_in_flight or limits.personas_per_day):
            yield
            return
        if limits.personas_per_day and len(job.personas) > limits.personas_per_day:
            raise ApiError(422, "personas_per_day_exceeded",
                           f"This job has {len(job.personas)} personas; this tenant may generate prompts for "
                           f"{limits.personas_per_day} per day", field="persona_ids")
        key = f"jobs.{caller.tenant}"

        counted = False  # by this request (else by another for the same job, or not at all)

        async def admit(state: dict) -> Refusal | None:
            nonlocal counted
            now = self.clock()
            jobs = TenantJobs.read(state).as_of(now)
            if limits.jobs_in_flight and len(jobs.jobs) >= limits.jobs_in_flight:
                for ended in await self._ended(list(jobs.jobs)):
                    del jobs.jobs[ended]
            counted = job.job_id not in jobs.jobs  # what admit_job counts, if it admits
            refusal = admit_job(jobs, job, limits, now)
            state.clear()
            state.update(asdict(jobs))
            return refusal

        await self._within(caller, key, admit, job_id=job.job_id)
        try:
            yield
        except JobStoredBefore:  # the job runs, stored by another request: counted once, as it is
            raise
        except asyncio.CancelledError:
            # Cut off (a shutdown, a client gone) perhaps while the log was storing the request:
            # the job may run, so it stays counted (until its end, or its deadline), as when NATS
            # does not confirm it.
            raise
        except BaseException:
            if counted:  # nothing was stored by this request: what it counted is given back
                await self._give_back(key, job)
            raise

    async def _give_back(self, key: str, job: JobRequested) -> None:
        async def release(state: dict) -> None:
            jobs = TenantJobs.read(state)
            jobs.jobs.pop(job.job_id, None)
            if jobs.day == job.occurred_at.date().isoformat():
                jobs.personas = max(0, jobs.personas - len(job.personas))
            state.update(asdict(jobs))

        await change_entry(self.kv, key, release)


async def tenant_own(kv: KeyValue, tenant: str) -> dict[str, int]:
    """The limits ``tenant`` has of its own (none: the settings' for all)."""
    if not TENANT_PATTERN.match(tenant):
        raise ValueError(f"a tenant is 1 to 64 letters, digits, '-' or '_' (got {tenant!r})")
    state, _ = await read_entry(kv, f"limits.{tenant}")
    return {name: value for name, value in state.items() if name in LIMITS} if isinstance(state, dict) else {}


async def set_tenant_limits(kv: KeyValue, tenant: str, changes: dict[str, int | None]) -> dict[str, int]:
    """Give ``tenant`` its own limits (a value per name in ``LIMITS``; None: back to the settings');
    returns the tenant's own limits after the change."""
    if not TENANT_PATTERN.match(tenant):
        raise ValueError(f"a tenant is 1 to 64 letters, digits, '-' or '_' (got {tenant!r})")
    unknown = set(changes) - set(LIMITS)
    if unknown:
        raise ValueError(f"unknown limits {sorted(unknown)}: choose from {', '.join(LIMITS)}")
    if any(v is not None and v < 0 for v in changes.values()):
        raise ValueError("a limit is a count: 0 (no limit) or more")

    async def change(state: dict) -> dict[str, int]:
        for name, value in changes.items():
            if value is None:
                state.pop(name, None)
            else:
                state[name] = value
        return {name: state[name] for name in LIMITS if name in state}

    return await change_entry(kv, f"limits.{tenant}", change)
