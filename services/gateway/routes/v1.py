"""The deprecated synchronous V1 endpoint, built on the V2 pipeline."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from contextlib import aclosing
from typing import Any, TypeVar

import structlog
from fastapi import APIRouter, Request, Response

from contracts import subjects
from contracts.api import GenerateFinalPromptsRequest, V1GenerateFinalPromptsResponse, V1PersonaPrompt
from contracts.events import JobFinished, PersonaCompleted
from services.gateway.deps import (
    CapacityDep,
    ClockDep,
    EventLogDep,
    JobWriter,
    ModelsDep,
    QuotasDep,
    SettingsDep,
    WaiterDep,
)
from services.gateway.errors import ApiError, responses
from services.gateway.jobs import NOT_CONFIRMED, build_job, job_not_confirmed, publish_request, sse_endpoint
from services.gateway.json_body import JSONBodyRoute
from services.runtime.failures import brief
from services.runtime.lifecycle import cancel_and_wait

router = APIRouter(prefix="/scenario", tags=["deprecated"], route_class=JSONBodyRoute)
log = structlog.get_logger()
T = TypeVar("T")


@router.post("/generate-final-prompts", response_model=V1GenerateFinalPromptsResponse, deprecated=True,
             responses=responses(404, 413, 422, 429, 503, 504))
async def generate_final_prompts_v1(
    body: GenerateFinalPromptsRequest,
    caller: JobWriter,
    request: Request,
    response: Response,
    models: ModelsDep,
    event_log: EventLogDep,
    settings: SettingsDep,
    waiter: WaiterDep,
    capacity: CapacityDep,
    clock: ClockDep,
    quotas: QuotasDep,
) -> V1GenerateFinalPromptsResponse:
    """Deprecated: waits for every prompt. Use ``/scenario/v2/generate-final-prompts``."""
    response.headers["Deprecation"] = "true"
    response.headers["Link"] = '</scenario/v2/generate-final-prompts>; rel="successor-version"'
    async with capacity.v1_waits.hold(caller.tenant):  # before anything is published: a busy answer starts no job
        job = await build_job(body, caller=caller, models=models, settings=settings, clock=clock)
        start = None
        async with quotas.job(caller, job):  # 429 past the tenant's jobs in flight or personas per day
            try:
                start = await publish_request(event_log, job)
            except NOT_CONFIRMED as exc:  # it may still run: it stays counted, and the answer names it
                log.warning("job_not_confirmed", job_id=job.job_id, error=brief(exc))
        if start is None:
            raise job_not_confirmed(job.job_id, v1=True)
        end = await _unless_client_leaves(
            request, _wait_for_end(event_log, job.job_id, start, settings.v1_timeout_seconds), job.job_id
        )
        seq, finished, prompts = end
        await waiter.wait_for(seq)  # a read right after this answer finds the prompts stored
        results = finished.results
        # This job's prompts are its own events': a persona's document holds the newest prompt
        # of any job, and another job may have written it meanwhile. The document only for one
        # whose event this version could not read.
        unread = [pid for pid, r in results.personas.items() if r.status == "completed" and pid not in prompts]
        if unread:
            docs = await models.personas_by_id(unread, ["system_prompt"])
            prompts.update({pid: doc.get("system_prompt") for pid, doc in docs.items()})
    return V1GenerateFinalPromptsResponse(
        job_id=job.job_id,
        status=finished.status,
        template_id=body.template_id,
        personas={
            pid: V1PersonaPrompt(
                status=r.status, mode=r.mode, persona_name=r.persona_name, prompt_length=r.prompt_length,
                error=r.error,
                system_prompt=prompts.get(pid) if r.status == "completed" else None,
            )
            for pid, r in results.personas.items()
        },
        total_personas=results.total_personas,
        successful=results.successful,
        failed=results.failed,
    )


async def _unless_client_leaves(request: Request, waiting: Coroutine[Any, Any, T], job_id: str) -> T:
    """``waiting``, given up when the client disconnects first: a caller that left must not
    hold its V1 slot (and a consumer) for the whole wait. Its job goes on regardless."""
    work = asyncio.ensure_future(waiting)
    left = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait([work, left], return_when=asyncio.FIRST_COMPLETED)
    finally:
        left.cancel()
        if not work.done():
            await cancel_and_wait(work)
    if work.done() and not work.cancelled():
        return work.result()
    log.info("v1_client_left", job_id=job_id)
    raise ApiError(499, "client_closed_request", f"The client left before job '{job_id}' ended", ids=[job_id])


async def _disconnected(request: Request) -> None:
    # The body is read already: the server's next message is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _wait_for_end(event_log, job_id: str, start: int,
                        timeout: float) -> tuple[int, JobFinished, dict[str, str | None]]:
    """The job's end (its sequence and event), and the prompt each of its personas was given."""
    async def _follow() -> tuple[int, JobFinished, dict[str, str | None]]:
        prompts: dict[str, str | None] = {}
        async with aclosing(event_log.follow(subjects.job_history(job_id), start)) as events:
            async for stored in events:
                if isinstance(stored.event, PersonaCompleted):
                    prompts[stored.event.persona_id] = stored.event.prompt
                elif isinstance(stored.event, JobFinished):
                    return stored.seq, stored.event, prompts
        raise AssertionError("the log ended")

    try:
        return await asyncio.wait_for(_follow(), timeout)
    except TimeoutError as exc:
        raise ApiError(
            504, "v1_timeout",
            f"Job '{job_id}' is still running after {timeout:.0f}s; follow it at "
            f"{sse_endpoint(job_id)}",
            ids=[job_id],
        ) from exc
