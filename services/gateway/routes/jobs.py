"""V2 prompt generation: start a job, follow it (SSE or polling), cancel, retry, audit."""

from __future__ import annotations

from typing import Annotated

import structlog
from fastapi import APIRouter, Header, Query, Request, Response
from pymongo.errors import ConnectionFailure
from sse_starlette import EventSourceResponse

from contracts import subjects
from contracts.api import (
    GenerateFinalPromptsRequest,
    GenerateFinalPromptsResponse,
    JobEventHistory,
    JobList,
    JobSummary,
    JobView,
)
from contracts.events import JobCancelRequested, JobRequested
from services.adapters.event_log import Contended, Precluded, Unless
from services.adapters.ports import EventLogPort, ReadModelsPort
from services.gateway.auth import Caller, Guard
from services.gateway.deps import (
    CapacityDep,
    ClockDep,
    EventLogDep,
    FeedsDep,
    FenceDep,
    GuardDep,
    JobIdPath,
    JobWriter,
    MetricsDep,
    ModelsDep,
    QuotasDep,
    Reader,
    SettingsDep,
    StreamReader,
    WaiterDep,
    idempotency_key,
)
from services.gateway.errors import ApiError, job_not_found, responses
from services.gateway.freshness import ReadFence
from services.gateway.history import MAX_SEQ, job_history_page
from services.gateway.http_head import direct_body
from services.gateway.jobs import (
    NOT_CONFIRMED,
    build_job,
    failed_personas,
    finished_event,
    idempotent_job_id,
    job_not_confirmed,
    job_view,
    job_view_from_log,
    publish_request,
    retry_job_id,
    same_request,
    sse_endpoint,
)
from services.gateway.json_body import JSONBodyRoute
from services.gateway.quotas import JobStoredBefore, TenantQuotas
from services.gateway.sse import HeldEventStream, stream_job_events
from services.gateway.sse_messages import Position, messages_for
from services.gateway.turns import Turns
from services.runtime.failures import brief

IdempotencyKey = Annotated[str | None, idempotency_key(
    "Names the job: the same request sent again with it answers with that job, started once")]

router = APIRouter(prefix="/scenario/v2", tags=["prompt generation (v2)"], route_class=JSONBodyRoute)
log = structlog.get_logger()


async def _requested(event_log, job_id: str, caller: Caller):
    """The job's request event, or 404 (another tenant's job too)."""
    stored = await event_log.last(subjects.job(job_id, "requested"))
    if stored is None or (stored.event is not None and not caller.owns(stored.event.tenant)):
        raise job_not_found(job_id)
    if stored.event is None:
        raise ApiError(500, "event_unreadable",
                       f"Job '{job_id}''s request (event {stored.seq}) cannot be read by this version: "
                       f"{stored.error}", ids=[job_id])
    return stored


async def _requested_seq(event_log, job_id: str) -> int:
    """Where the job's request is in the log, or 404 (the event itself is not decoded)."""
    seq = await event_log.last_seq_on(subjects.job(job_id, "requested"))
    if seq is None:
        raise job_not_found(job_id)
    return seq


async def _owned_seq(event_log, models, job_id: str, caller: Caller) -> int:
    """Where the caller's job's request is in the log, or 404. The job's view says whose it is
    without decoding the request (large); a job the projector has not reached, or whose view
    has aged out, is judged by its request event."""
    doc = await models.jobs.find_one({"_id": job_id}, {"tenant": 1})
    if doc is None:
        return (await _requested(event_log, job_id, caller)).seq
    if not caller.owns(doc.get("tenant")):
        raise job_not_found(job_id)
    return await _requested_seq(event_log, job_id)


_retrying = Turns()  # a job being retried by requests of this process: they take turns


def key_reused(job_id: str) -> ApiError:
    return ApiError(409, "idempotency_key_reused",
                    f"This Idempotency-Key named job '{job_id}', which asked for other personas or modes: "
                    "a new request needs a new key", field="Idempotency-Key", ids=[job_id])


async def start_job(
    event: JobRequested, event_log, guard: Guard, quotas: TenantQuotas, caller: Caller, *,
    may_repeat: bool = False, keyed: bool = False,
) -> GenerateFinalPromptsResponse:
    """``may_repeat``: the job's id is not new each time (a retry's, an Idempotency-Key's), so the
    log may store another request's publish of it instead: that one's quota is then the one that
    counts. ``keyed``: the request named its job with an Idempotency-Key."""
    # Durable once published: answer now. A poll before the projector catches up is answered from the log.
    unconfirmed: BaseException | None = None
    first = None  # the request of this job the log stored, when it is another's
    try:
        async with quotas.job(caller, event):  # 429 past the tenant's jobs in flight or personas per day
            try:
                seq = await publish_request(event_log, event)
            except NOT_CONFIRMED as exc:
                # The log may still store it (a publish it has not answered yet), so the job may run:
                # it stays counted (until it ends, or its deadline).
                unconfirmed = exc
            else:
                if may_repeat:
                    try:
                        stored = await event_log.at(seq)
                    except NOT_CONFIRMED as exc:  # stored, and counted: whose, unknown
                        log.warning("job_request_unread", job_id=event.job_id, seq=seq, error=brief(exc))
                        stored = None
                    if stored is not None and stored.event is not None and stored.event.event_id != event.event_id:
                        first = stored.event
                        raise JobStoredBefore
    except JobStoredBefore:
        if keyed and (not isinstance(first, JobRequested) or not same_request(first, event)):
            raise key_reused(event.job_id) from None  # another request with the key, at the same time
        log.info("job_requested_already", job_id=event.job_id, retry_of=event.retry_of)
    if unconfirmed is not None:
        log.warning("job_not_confirmed", job_id=event.job_id, error=brief(unconfirmed))
        raise job_not_confirmed(event.job_id, keyed=keyed)
    log.info("job_requested", job_id=event.job_id, personas=len(event.personas), retry_of=event.retry_of)
    return GenerateFinalPromptsResponse(
        job_id=event.job_id,
        sse_endpoint=guard.stream_endpoint(event.job_id, caller),
        persona_count=len(event.personas),
        retry_of=event.retry_of,
    )


@router.post("/generate-final-prompts", status_code=202, response_model=GenerateFinalPromptsResponse,
             response_model_exclude_none=True, responses=responses(404, 409, 413, 422, 429, 503))
async def generate_final_prompts(
    body: GenerateFinalPromptsRequest, caller: JobWriter, models: ModelsDep, event_log: EventLogDep,
    settings: SettingsDep, clock: ClockDep, guard: GuardDep, quotas: QuotasDep,
    idempotency_key: IdempotencyKey,
) -> GenerateFinalPromptsResponse:
    """Start generating the personas' system prompts; returns at once with the job id.

    With an ``Idempotency-Key`` the job's id comes from it (and the caller's tenant): the same
    request sent again answers with that job, started once, whatever happened to the first
    answer; the key sent with another request is a 409."""
    job_id = idempotent_job_id(caller.tenant, idempotency_key) if idempotency_key else None
    event = await build_job(body, caller=caller, models=models, settings=settings, clock=clock, job_id=job_id)
    if job_id is None:
        return await start_job(event, event_log, guard, quotas, caller)
    stored = await event_log.first_readable_on([subjects.job(job_id, "requested")])
    if stored is None:
        return await start_job(event, event_log, guard, quotas, caller, may_repeat=True, keyed=True)
    if not isinstance(stored.event, JobRequested) or not same_request(stored.event, event):
        raise key_reused(job_id)
    log.info("job_requested_already", job_id=job_id)
    return GenerateFinalPromptsResponse(
        job_id=job_id, sse_endpoint=guard.stream_endpoint(job_id, caller), persona_count=len(stored.event.personas),
    )


@router.get("/prompt-generation-status/{job_id}", response_class=EventSourceResponse,
            responses={200: {"content": {"text/event-stream": {}}}, 204: {"description": "job already ended"},
                       **responses(404, 422, 429, 503)})
async def prompt_generation_status(
    job_id: JobIdPath,
    caller: StreamReader,
    event_log: EventLogDep,
    models: ModelsDep,
    settings: SettingsDep,
    feeds: FeedsDep,
    capacity: CapacityDep,
    metrics: MetricsDep,
    request: Request,
    last_event_id: str | None = Query(None, description="Resume after this message id"),
    last_event_id_header: str | None = Header(None, alias="Last-Event-ID"),
):
    """Server-Sent Events: a job's whole history, then live progress, ending after ``results``."""
    known = feeds.requested(job_id)
    if known is not None and isinstance(known.event, JobRequested):  # followed here already: no lookup
        if not caller.owns(known.event.tenant):
            raise job_not_found(job_id)
        requested_seq = known.seq
    else:
        requested_seq = await _owned_seq(event_log, models, job_id, caller)
    after = Position.parse(last_event_id_header or last_event_id)
    if after is not None:
        end = await finished_event(event_log, job_id)
        if end is not None and after.has_seen(end.seq, len(messages_for(end.event))):
            # Nothing left to send: 204 tells a browser's EventSource to stop reconnecting.
            return Response(status_code=204)
    return HeldEventStream(
        stream_job_events(feeds, job_id, start_seq=requested_seq, after=after,
                          retry_ms=settings.sse_retry_ms, metrics=metrics, direct=direct_body(request.scope)),
        slot=capacity.sse_streams.take(caller.tenant),
        metrics=metrics,  # the last thing before the response: it gives the slot back
        headers={"X-Accel-Buffering": "no", "Cache-Control": "no-cache"},
    )


@router.get("/job-status/{job_id}", response_model=JobView, responses=responses(404, 422, 503))
async def job_status(
    job_id: JobIdPath, caller: Reader, models: ModelsDep, event_log: EventLogDep, guard: GuardDep, fence: FenceDep,
) -> JobView:
    """The polling alternative to SSE. With auth on, ``sse_endpoint`` carries a fresh stream token: a
    page opened on a job it did not start (or whose token expired) follows it with an EventSource."""
    view = await _job_view(job_id, caller, models, event_log, fence)
    return view.model_copy(update={"sse_endpoint": guard.stream_endpoint(job_id, caller)})


async def _job_doc(models: ReadModelsPort, job_id: str, caller: Caller,
                   fence: ReadFence) -> tuple[dict | None, bool]:
    """The caller's job's document (404 for another tenant's, before any wait), and whether it is
    up to date: a running job's is read again once the projector has the job's end, if the log
    holds it (a client may have seen that end on its SSE stream). False when that wait timed out."""
    doc = await models.jobs.find_one({"_id": job_id})
    if doc is not None and not caller.owns(doc.get("tenant")):
        raise job_not_found(job_id)
    if doc is not None and doc.get("status") != "processing":
        return doc, True
    # running, or not applied yet (a job can end before the projector has its request)
    if not await fence.jobs([job_id]):
        return doc, False
    return await models.jobs.find_one({"_id": job_id}), True


async def _job_view(job_id: str, caller: Caller, models: ReadModelsPort, event_log: EventLogPort,
                    fence: ReadFence) -> JobView:
    doc, current = await _job_doc(models, job_id, caller, fence)
    if not current:
        doc = None  # the projector has not caught up in time: the log says how the job stands
    if doc is not None:
        if not caller.owns(doc.get("tenant")):
            raise job_not_found(job_id)
        personas = await models.job_persona_docs(job_id)
        if len(personas) == doc["total_personas"]:  # else the projector is mid-write: ask the log
            return job_view(doc, personas)
    return await _job_view_from_log(job_id, caller, event_log)


async def _job_view_from_log(job_id: str, caller: Caller, event_log: EventLogPort) -> JobView:
    """The caller's job as its events say (404 for none, or another tenant's)."""
    requested = await _requested(event_log, job_id, caller)
    finished = await finished_event(event_log, job_id)
    return job_view_from_log(requested.event, finished.event if finished and finished.event else None)


@router.get("/jobs", response_model=JobList, responses=responses(422, 503))
async def list_jobs(caller: Reader, models: ModelsDep, fence: FenceDep,
                    limit: int = Query(20, ge=1, le=200)) -> JobList:
    """The caller's tenant's recent jobs, newest first."""
    fields = ["status", "template_id", "template_data.title", "total_personas", "created_at", "finished_at",
              "retry_of"]
    # Every job end the log holds now, applied first: a job listed as running may have ended,
    # and one may have ended before the projector had even its request.
    await fence.every_job()
    docs = [d async for d in models.jobs.find(caller.only_mine(), fields).sort("created_at", -1).limit(limit)]
    counts = await models.persona_counts([d["_id"] for d in docs])
    return JobList(jobs=[
        JobSummary(
            job_id=d["_id"], status=d["status"], template_id=d["template_id"],
            template_title=d.get("template_data", {}).get("title"),
            total_personas=d.get("total_personas", 0),
            completed=counts.get((d["_id"], "completed"), 0), failed=counts.get((d["_id"], "failed"), 0),
            cancelled=counts.get((d["_id"], "cancelled"), 0),
            created_at=d["created_at"], finished_at=d.get("finished_at"), retry_of=d.get("retry_of"),
        )
        for d in docs
    ])


@router.post("/jobs/{job_id}/cancel", status_code=202, response_model=JobView,
             responses=responses(404, 409, 413, 422, 429, 503))
async def cancel_job(
    job_id: JobIdPath, caller: JobWriter, models: ModelsDep, event_log: EventLogDep, waiter: WaiterDep,
    guard: GuardDep, fence: FenceDep,
) -> JobView:
    """Stop a running job: no new LLM call starts; unfinished personas end ``cancelled``."""
    requested = await _owned_seq(event_log, models, job_id, caller)
    if (end := await finished_event(event_log, job_id)) is not None:
        raise _already_ended(job_id, end)
    cancel = JobCancelRequested(job_id=job_id, correlation_id=job_id, **caller.stamp())
    try:  # stored only while the job has not ended: one ending meanwhile is a 409 too, not a 202
        seq = await event_log.publish(cancel, unless=Unless(subjects.job(job_id, "*"), tuple(subjects.job_ends(job_id)),
                                                            after=requested))
    except Precluded:
        raise _already_ended(job_id, await finished_event(event_log, job_id)) from None
    except Contended as exc:  # the job's subjects changed under each try (cancels at once, or garbage there)
        raise ApiError(503, "log_contended", f"Job '{job_id}''s log changed under each try to store the cancel "
                       "(other requests at the same moment); try again", ids=[job_id],
                       headers={"Retry-After": "1"}) from exc
    log.info("job_cancel_requested", job_id=job_id)
    try:
        await waiter.wait_for(seq)
        return await job_status(job_id, caller, models, event_log, guard, fence)
    except ConnectionFailure as exc:  # the cancel is stored: it is answered, from the log
        log.warning("job_view_from_log", job_id=job_id, reason="mongodb_unavailable", error=brief(exc))
        view = await _job_view_from_log(job_id, caller, event_log)
        return view.model_copy(update={"sse_endpoint": guard.stream_endpoint(job_id, caller)})


def _already_ended(job_id: str, end) -> ApiError:
    status = getattr(getattr(end, "event", None), "status", "ended")
    return ApiError(409, "job_finished", f"Job '{job_id}' already ended ({status}); nothing to cancel", ids=[job_id])


def _still_running(job_id: str) -> ApiError:
    return ApiError(409, "job_running", f"Job '{job_id}' is still running; retry once it has ended", ids=[job_id])


@router.post("/jobs/{job_id}/retry-failed", status_code=202, response_model=GenerateFinalPromptsResponse,
             response_model_exclude_none=True, responses=responses(404, 409, 413, 422, 429, 503))
async def retry_failed(
    job_id: JobIdPath, caller: JobWriter, models: ModelsDep, event_log: EventLogDep, settings: SettingsDep,
    clock: ClockDep, guard: GuardDep, quotas: QuotasDep, fence: FenceDep,
) -> GenerateFinalPromptsResponse:
    """A new job for exactly the personas that failed, with their modes."""
    doc, current = await _job_doc(models, job_id, caller, fence)
    if doc is not None and not caller.owns(doc.get("tenant")):  # one applied only after the wait
        raise job_not_found(job_id)
    if doc is None:  # not applied yet (a job just started), or aged out of the read models: the log says
        await _requested(event_log, job_id, caller)  # 404 if it never was (or is another tenant's)
        if await event_log.first_readable_on(subjects.job_ends(job_id)) is None:
            raise _still_running(job_id)
        if current:  # the projector has the job's end, and no view of it: the view aged out
            raise ApiError(404, "job_view_expired",
                           f"Job '{job_id}' ended longer ago than the views are kept: its personas can no longer "
                           f"be retried from it (its events: GET /scenario/v2/jobs/{job_id}/events)", ids=[job_id])
    if doc is None or not current:
        raise ApiError(503, "projection_lagging",
                       f"Job '{job_id}''s view is behind the event log (it may have ended); try again shortly",
                       ids=[job_id], headers={"Retry-After": "1"})
    if doc["status"] == "processing":
        raise _still_running(job_id)
    failed = failed_personas(await models.job_persona_docs(job_id))
    if not failed:
        raise ApiError(409, "nothing_failed", f"Job '{job_id}' has no failed personas to retry", ids=[job_id])
    retry_id = retry_job_id(job_id)
    # One at a time per job here, so the next sees the first's request (and takes no quota); requests
    # at once to two gateways are stored once by the log, and the later gives its quota back.
    async with _retrying.of(job_id):
        if await event_log.last_seq_on(subjects.job(retry_id, "requested")) is not None \
                or await models.jobs.find_one({"_id": retry_id}, ["_id"]) is not None:
            raise ApiError(409, "already_retried",
                           f"Job '{job_id}' was retried as job '{retry_id}': follow it at "
                           f"{sse_endpoint(retry_id)}, or retry its failed personas", ids=[retry_id])
        body = GenerateFinalPromptsRequest(template_id=doc["template_id"], persona_ids=list(failed),
                                           mode_mapping=failed)
        event = await build_job(body, caller=caller, models=models, settings=settings, clock=clock,
                                retry_of=job_id)
        return await start_job(event, event_log, guard, quotas, caller, may_repeat=True)


@router.get("/jobs/{job_id}/events", response_model=JobEventHistory, responses=responses(404, 422, 429, 503))
async def job_events(
    job_id: JobIdPath,
    caller: Reader,
    event_log: EventLogDep,
    models: ModelsDep,
    capacity: CapacityDep,
    after: int = Query(0, ge=0, le=MAX_SEQ, description="Events after this stream sequence (a page's `next_after`)"),
    limit: int = Query(100, ge=1, le=1000, description="At most this many events (fewer once they hold 4 MiB: "
                                                        "follow `next_after`)"),
) -> JobEventHistory:
    """The job's event history from the log, in order (for audit), a page at a time."""
    async with capacity.history_reads.hold(caller.tenant):
        start = max(await _owned_seq(event_log, models, job_id, caller), after + 1)
        events, next_after = await job_history_page(event_log, job_id, start, limit)
    return JobEventHistory(job_id=job_id, events=events, next_after=next_after)

