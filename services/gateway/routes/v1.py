"""The deprecated synchronous V1 endpoint, built on the V2 pipeline."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

from fastapi import APIRouter, Response

from contracts import subjects
from contracts.api import GenerateFinalPromptsRequest, V1GenerateFinalPromptsResponse, V1PersonaPrompt
from contracts.events import JobFinished
from services.gateway.deps import ClockDep, EventLogDep, ModelsDep, SettingsDep, WaiterDep
from services.gateway.errors import ApiError
from services.gateway.jobs import build_job, sse_endpoint

router = APIRouter(prefix="/scenario", tags=["deprecated"])


@router.post("/generate-final-prompts", response_model=V1GenerateFinalPromptsResponse, deprecated=True)
async def generate_final_prompts_v1(
    body: GenerateFinalPromptsRequest,
    response: Response,
    models: ModelsDep,
    event_log: EventLogDep,
    settings: SettingsDep,
    waiter: WaiterDep,
    clock: ClockDep,
) -> V1GenerateFinalPromptsResponse:
    """Deprecated: waits for every prompt. Use ``/scenario/v2/generate-final-prompts``."""
    response.headers["Deprecation"] = "true"
    response.headers["Link"] = '</scenario/v2/generate-final-prompts>; rel="successor-version"'
    job = await build_job(body, models=models, settings=settings, clock=clock)
    start = await event_log.publish(job)
    end = await _wait_for_end(event_log, job.job_id, start, settings.v1_timeout_seconds)
    await waiter.wait_for(end[0])
    results = end[1].results
    docs = {d["_id"]: d async for d in models.personas.find({"_id": {"$in": body.persona_ids}})}
    return V1GenerateFinalPromptsResponse(
        job_id=job.job_id,
        status=end[1].status,
        template_id=body.template_id,
        personas={
            pid: V1PersonaPrompt(
                status=r.status, mode=r.mode, persona_name=r.persona_name, prompt_length=r.prompt_length,
                error=r.error,
                system_prompt=docs.get(pid, {}).get("system_prompt") if r.status == "completed" else None,
            )
            for pid, r in results.personas.items()
        },
        total_personas=results.total_personas,
        successful=results.successful,
        failed=results.failed,
    )


async def _wait_for_end(event_log, job_id: str, start: int, timeout: float) -> tuple[int, JobFinished]:
    async def _follow() -> tuple[int, JobFinished]:
        async with aclosing(event_log.follow(subjects.job_history(job_id), start)) as events:
            async for stored in events:
                if isinstance(stored.event, JobFinished):
                    return stored.seq, stored.event
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
