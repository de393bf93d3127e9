"""Starting jobs and reading them: validation, the JobRequested event, job views."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

from contracts import subjects
from contracts.api import GenerateFinalPromptsRequest, JobPersonaView, JobView
from contracts.domain import JobPersona, JobResults, Persona, TemplateData, TokenUsage, count_statuses
from contracts.events import JobFinished, JobRequested
from contracts.limits import READING
from services.adapters.event_log import UNAVAILABLE, StoredEvent
from services.adapters.ports import EventLogPort, ReadModelsPort
from services.gateway.auth import Caller
from services.gateway.errors import UNAVAILABLE_RETRY_SECONDS, ApiError, listed, not_found
from services.runtime.lifecycle import Clock
from services.runtime.settings import Settings


def sse_endpoint(job_id: str) -> str:
    return f"/scenario/v2/prompt-generation-status/{job_id}"


def persona_from_doc(doc: dict[str, Any]) -> Persona:
    return Persona.model_validate({k: doc[k] for k in Persona.model_fields if k in doc}, context=READING)


async def load_template(
    models: ReadModelsPort, template_id: str, caller: Caller, *, field: str = "template_id"
) -> dict[str, Any]:
    """The caller's template, or 404 (another tenant's is as unknown as one that never was)."""
    doc = await models.templates.find_one({"_id": template_id})
    if doc is None or not caller.owns(doc.get("tenant")):
        raise not_found("template", template_id, field=field)
    return doc


RETRIES = uuid.UUID("5c0e9d6a-3f41-4d7e-9b0a-7f2f3a6c1e55")  # the namespace of retry jobs' ids


PUBLISH_SECONDS = 15  # a job's request not stored by then is answered 503, not kept waiting


async def publish_request(event_log: EventLogPort, event: JobRequested) -> int:
    """Store a job's request; its sequence. NATS not confirming it within :data:`PUBLISH_SECONDS`
    (the retries' last attempt included) raises what it raised, or ``TimeoutError``: the log may
    still store it, so the job may run (:func:`job_not_confirmed`)."""
    async with asyncio.timeout(PUBLISH_SECONDS):
        return await event_log.publish(event, retry_seconds=PUBLISH_SECONDS)


# What :func:`publish_request` (or a read of the log) raises when NATS does not answer in time.
NOT_CONFIRMED = (*UNAVAILABLE, TimeoutError)


def job_not_confirmed(job_id: str, *, keyed: bool = False, v1: bool = False) -> ApiError:
    """The 503 of a job whose request NATS did not confirm: it names the job, which may still start."""
    if v1:
        again = "since asking again starts another job (the V2 route takes an Idempotency-Key that names its job)"
    elif keyed:
        again = "or ask again with the same Idempotency-Key header, which names this job and starts no other"
    else:
        again = "since asking again without an Idempotency-Key header starts another job"
    return ApiError(
        503, "job_not_confirmed",
        f"NATS (the event log) did not confirm job '{job_id}' in time: it may still start. "
        f"Follow GET /scenario/v2/job-status/{job_id} before asking again, {again}",
        ids=[job_id], headers={"Retry-After": str(UNAVAILABLE_RETRY_SECONDS)},
    )


IDEMPOTENT = uuid.UUID("9a4f2c1e-6b7d-4e58-8c3a-2d1f0e9b7a64")  # the namespace of jobs named by an Idempotency-Key


def idempotent_job_id(tenant: str, key: str) -> str:
    """The id of the one job a tenant's ``Idempotency-Key`` names: the request sent again (a
    client's retry after a timeout or a 503) names the same job, which the log stores once."""
    return str(uuid.uuid5(IDEMPOTENT, f"{tenant}\n{key}"))


def same_request(stored: JobRequested, event: JobRequested) -> bool:
    """Whether ``event`` asks for what ``stored`` asked for: the template, personas and modes."""
    def asked(e: JobRequested) -> tuple:  # the personas in any order (duplicates are refused)
        return e.template_id, sorted((p.persona.id, p.mode) for p in e.personas)
    return asked(stored) == asked(event)


def retry_job_id(job_id: str) -> str:
    """The id of the one job that retries ``job_id``'s failed personas: a retry asked twice (a
    double click, a client's retry after a timeout) names the same job, which the log stores once."""
    return str(uuid.uuid5(RETRIES, job_id))


async def build_job(
    req: GenerateFinalPromptsRequest, *, caller: Caller, models: ReadModelsPort, settings: Settings, clock: Clock,
    retry_of: str | None = None, job_id: str | None = None,
) -> JobRequested:
    """Validate a request against the read models and turn it into a JobRequested.

    What needs the read models to refuse comes after what does not, and a 404 (an unknown
    id) before a 422, so a request its schema accepts is refused only for what it names."""
    for field, size in (("persona_ids", len(req.persona_ids)), ("mode_mapping", len(req.mode_mapping))):
        if size > settings.max_personas_per_job:
            raise ApiError(
                422, "too_many_personas",
                f"A job takes at most {settings.max_personas_per_job} personas; {field} has {size}",
                field=field,
            )
    template = await load_template(models, req.template_id, caller)
    docs = {i: d for i, d in (await models.personas_by_id(req.persona_ids)).items() if caller.owns(d.get("tenant"))}
    missing = [i for i in req.persona_ids if i not in docs]
    if missing:
        raise ApiError(404, "persona_not_found", f"Unknown persona ids: {listed(missing)}",
                       field="persona_ids", ids=missing)
    modeless = [i for i in req.persona_ids if i not in req.mode_mapping]
    if modeless:
        raise ApiError(422, "mode_missing", f"mode_mapping has no mode for persona ids: {listed(modeless)}",
                       field="mode_mapping", ids=modeless)
    foreign = [i for i in req.persona_ids if docs[i].get("template_id") != req.template_id]
    if foreign:
        raise ApiError(
            422, "persona_template_mismatch",
            f"Personas {listed(foreign)} belong to another template than '{req.template_id}'",
            field="persona_ids", ids=foreign,
        )
    job_id = job_id or (retry_job_id(retry_of) if retry_of else str(uuid.uuid4()))
    now = clock()
    return JobRequested(
        job_id=job_id,
        correlation_id=job_id,
        template_id=req.template_id,
        template_data=TemplateData.model_validate(template["template_data"], context=READING),
        personas=[JobPersona(persona=persona_from_doc(docs[i]), mode=req.mode_mapping[i]) for i in req.persona_ids],
        deadline=now + timedelta(seconds=settings.job_deadline_seconds),
        retry_of=retry_of,
        occurred_at=now,
        **caller.stamp(),
    )


async def finished_seq(event_log: EventLogPort, job_id: str) -> int | None:
    """Where the job's end event is in the log (None while it runs)."""
    end = await finished_event(event_log, job_id)
    return end.seq if end is not None else None


async def finished_event(event_log: EventLogPort, job_id: str) -> StoredEvent | None:
    """The job's end event, or None while it runs: garbage on an end's subject is no end."""
    return await event_log.first_readable_on(subjects.job_ends(job_id))


def job_view(doc: dict[str, Any], persona_docs: list[dict[str, Any]]) -> JobView:
    personas = {
        p["persona_id"]: JobPersonaView(**{k: v for k, v in p.items() if k in JobPersonaView.model_fields})
        for p in persona_docs
    }
    count = count_statuses(p.status for p in personas.values())
    usage = TokenUsage()
    for p in persona_docs:
        usage = usage + TokenUsage(**p.get("usage", {}))
    updated = max([doc.get("updated_at") or doc["created_at"], *(p["updated_at"] for p in persona_docs)])
    return JobView(
        job_id=doc["_id"],
        status=doc["status"],
        template_id=doc["template_id"],
        personas=personas,
        total_personas=len(personas),
        completed=count["completed"],
        failed=count["failed"],
        cancelled=count["cancelled"],
        processing=count["processing"],
        queued=count["queued"],
        usage=usage,
        created_at=doc["created_at"],
        updated_at=updated,
        finished_at=doc.get("finished_at"),
        deadline=doc.get("deadline"),
        retry_of=doc.get("retry_of"),
        error=doc.get("error"),
        actor=doc.get("actor"),
        tenant=doc.get("tenant"),
        sse_endpoint=sse_endpoint(doc["_id"]),
        results=JobResults.model_validate(doc["results"], context=READING) if doc.get("results") else None,
    )


def job_view_from_log(requested: JobRequested, finished: JobFinished | None) -> JobView:
    """The view of a job built from its events: one the projector has not reached yet
    (everything queued), or one whose view left MongoDB after its retention."""
    results = finished.results if finished else None
    personas = {}
    for jp in requested.personas:
        r = results.personas.get(jp.persona.id) if results else None
        personas[jp.persona.id] = JobPersonaView(
            persona_id=jp.persona.id, persona_name=jp.persona.name, mode=jp.mode,
            status=r.status if r else "queued", prompt_length=r.prompt_length if r else None,
            error=r.error if r else None, error_code=r.error_code if r else None,
        )
    count = count_statuses(p.status for p in personas.values())
    return JobView(
        job_id=requested.job_id, status=finished.status if finished else "processing",
        template_id=requested.template_id, personas=personas, total_personas=len(personas),
        completed=count["completed"], failed=count["failed"], cancelled=count["cancelled"], processing=0,
        queued=count["queued"], usage=results.usage if results else TokenUsage(),
        created_at=requested.occurred_at, updated_at=finished.occurred_at if finished else requested.occurred_at,
        finished_at=finished.occurred_at if finished else None, deadline=requested.deadline,
        retry_of=requested.retry_of, error=finished.error if finished else None,
        actor=requested.actor, tenant=requested.tenant,
        sse_endpoint=sse_endpoint(requested.job_id), results=results,
    )


def failed_personas(persona_docs: list[dict[str, Any]]) -> dict[str, str]:
    """persona id -> mode of every persona that ended ``failed``, in job order."""
    return {p["persona_id"]: p["mode"] for p in persona_docs if p["status"] == "failed"}
