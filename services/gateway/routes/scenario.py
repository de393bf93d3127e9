"""Templates and personas: ``/scenario/analyze-scenario-enhanced``, ``/scenario/generate-personas``
and their reads."""

from __future__ import annotations

import asyncio
import math
import uuid
from typing import Annotated

import structlog
from fastapi import APIRouter, Query

from contracts import subjects
from contracts.api import (
    PERSONAS_PER_REQUEST,
    AnalyzeScenarioRequest,
    GeneratePersonasRequest,
    GeneratePersonasResponse,
    PersonaList,
    PersonaView,
    TemplateView,
)
from contracts.domain import Persona, TemplateData
from contracts.events import PersonaCreated, TemplateCreated
from contracts.limits import READING
from services.adapters.event_log import StoredEvent
from services.adapters.llm.base import LLMError
from services.adapters.llm.limits import estimated_tokens, limited
from services.gateway.deps import (
    EventLogDep,
    FenceDep,
    LimiterDep,
    MetricsDep,
    ModelsDep,
    PersonaIdPath,
    PersonaIdQuery,
    ProviderDep,
    Reader,
    ScenarioWriter,
    SettingsDep,
    TemplateIdPath,
    TemplateIdQuery,
    WaiterDep,
    idempotency_key,
)
from services.gateway.errors import ApiError, not_found, responses
from services.gateway.jobs import IDEMPOTENT, load_template
from services.gateway.json_body import JSONBodyRoute
from services.gateway.turns import Turns
from services.runtime.settings import Settings

router = APIRouter(prefix="/scenario", tags=["templates and personas"], route_class=JSONBodyRoute)
log = structlog.get_logger()


def _estimate(prompt: str, settings: Settings) -> int:
    """The prompt, plus the instructions around it (about 1,200 characters)."""
    return estimated_tokens(len(prompt) + 1200, settings.llm_expected_completion_tokens)


def _llm_failure(exc: LLMError) -> ApiError:
    detail = f"The language model could not do this: {exc.message}"
    if exc.code == "llm_rate_limited":  # try again later: say when
        retry_after = str(max(1, math.ceil(exc.retry_after or 1)))
        return ApiError(503, exc.code, f"{detail}; try again in {retry_after} s", headers={"Retry-After": retry_after})
    return ApiError(504 if exc.code == "llm_timeout" else 502, exc.code, detail)


@router.post("/analyze-scenario-enhanced", status_code=201, response_model=TemplateView,
             responses=responses(413, 422, 429, 502, 503, 504))
async def analyze_scenario(
    body: AnalyzeScenarioRequest,
    caller: ScenarioWriter,
    provider: ProviderDep,
    event_log: EventLogDep,
    waiter: WaiterDep,
    limiter: LimiterDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> TemplateView:
    """Turn a scenario document into a structured template."""
    tokens = _estimate(body.scenario_document, settings)
    try:
        template_data = (await limited(limiter, tokens, lambda: provider.analyze_scenario(body.scenario_document),
                                       metrics=metrics, model=provider.model,
                                       max_wait=settings.llm_max_wait_seconds)).value
    except LLMError as exc:
        raise _llm_failure(exc) from exc
    event = TemplateCreated(
        template_id=str(uuid.uuid4()), scenario_document=body.scenario_document, template_data=template_data,
        **caller.stamp(),
    )
    await waiter.wait_for(await event_log.publish(event))
    log.info("template_created", template_id=event.template_id, provider=provider.name)
    return TemplateView(template_id=event.template_id, template_data=template_data, created_at=event.occurred_at)


@router.get("/templates/{template_id}", response_model=TemplateView, responses=responses(404, 422, 503))
async def get_template(template_id: TemplateIdPath, caller: Reader, models: ModelsDep) -> TemplateView:
    doc = await load_template(models, template_id, caller)
    return TemplateView.model_validate(
        {"template_id": template_id, "template_data": doc["template_data"], "created_at": doc.get("created_at")},
        context=READING)


@router.post("/generate-personas", status_code=201, response_model=GeneratePersonasResponse,
             responses=responses(404, 409, 413, 422, 429, 502, 503, 504))
async def generate_personas(
    body: GeneratePersonasRequest,
    caller: ScenarioWriter,
    provider: ProviderDep,
    event_log: EventLogDep,
    models: ModelsDep,
    waiter: WaiterDep,
    limiter: LimiterDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    key: Annotated[str | None, idempotency_key(
        "Names the personas: the same request sent again with it answers with them, made once")],
) -> GeneratePersonasResponse:
    """Invent ``count`` personas for a template. They have no prompt yet.

    With an ``Idempotency-Key`` the personas' ids come from it (and the caller's tenant): the same
    request sent again answers with the personas the log holds under them, and makes only those
    it does not (an answer lost, or a 503 after some were stored); the key sent with another
    template, persona type or count is a 409."""
    template = await load_template(models, body.template_id, caller)
    template_data = TemplateData.model_validate(template["template_data"], context=READING)

    async def make(ids: list[str]) -> list[Persona]:
        tokens = _estimate(template_data.model_dump_json(), settings)
        try:
            drafts = (await limited(
                limiter, tokens, lambda: provider.generate_personas(template_data, body.persona_type, ids),
                metrics=metrics, model=provider.model, max_wait=settings.llm_max_wait_seconds)).value
        except LLMError as exc:
            raise _llm_failure(exc) from exc
        return [Persona(**d.model_dump(), id=pid, template_id=body.template_id, persona_type=body.persona_type)
                for pid, d in zip(ids, drafts, strict=True)]

    async def publish(personas: list[Persona]) -> list[int]:
        return list(await asyncio.gather(
            *(event_log.publish(PersonaCreated(persona=p, **caller.stamp())) for p in personas)))

    if key is None:
        personas = await make([str(uuid.uuid4()) for _ in range(body.count)])
        await waiter.wait_for(max(await publish(personas)))
        log.info("personas_created", template_id=body.template_id, count=len(personas))
        return GeneratePersonasResponse(
            template_id=body.template_id, personas=[PersonaView(**p.model_dump()) for p in personas])

    ids = keyed_persona_ids(caller.tenant, key, body.count)
    # The first persona of each other count the key could have asked for: one stored, it did.
    others = [keyed_persona_id(caller.tenant, key, n, 0) for n in range(1, PERSONAS_PER_REQUEST + 1)
              if n != body.count]
    # Requests here with the key take turns: the next finds what the first stored.
    async with _keyed.of(caller.tenant + "\n" + key):
        found = await _stored_personas(event_log, ids + others, body)
        if set(others) & set(found):
            raise personas_key_reused()
        missing = [pid for pid in ids if pid not in found]
        made: list[Persona] = []
        if missing:
            made = await make(missing)
            # The first alone, then the rest, once the log says this request is the one making them:
            # of requests with the key at once on two gateways, the first whose first persona the
            # log stored goes on, and the others store nothing more.
            seqs = await publish(made[:1])
            now = await _stored_personas(event_log, missing[:1] + others, body)
            first = now.get(missing[0])
            if first is not None and first.event.persona != made[0]:
                raise personas_key_in_use()
            if any(stored.seq < seqs[0] for pid, stored in now.items() if pid in others):
                raise personas_key_reused()
            seqs += await publish(made[1:])
            await waiter.wait_for(max(seqs))  # a read of them from here finds them
            found |= await _stored_personas(event_log, missing, body)
    # What the log holds; this request's own where a replica answering the read has not got it
    # yet (a direct get may be served by any replica of the stream).
    personas = {p.id: p for p in made} | {pid: stored.event.persona for pid, stored in found.items()}
    log.info("personas_created", template_id=body.template_id, count=len(missing), asked=len(ids))
    return GeneratePersonasResponse(
        template_id=body.template_id, personas=[PersonaView(**personas[pid].model_dump()) for pid in ids])


_keyed = Turns()  # personas named by one Idempotency-Key, asked for by requests of this process


def keyed_persona_id(tenant: str, key: str, count: int, i: int) -> str:
    """The id of persona ``i`` of the ``count`` a tenant's ``Idempotency-Key`` names (another
    count names others)."""
    return str(uuid.uuid5(IDEMPOTENT, f"{tenant}\n{key}\n{count} personas\n{i}"))


def keyed_persona_ids(tenant: str, key: str, count: int) -> list[str]:
    """The ids of the ``count`` personas a tenant's ``Idempotency-Key`` names, in order."""
    return [keyed_persona_id(tenant, key, count, i) for i in range(count)]


async def _stored_personas(event_log, ids: list[str], body: GeneratePersonasRequest) -> dict[str, StoredEvent]:
    """The creations of the personas among ``ids`` the log holds (the log, not the read model,
    which may lag); a 409 if one was made for another template or persona type."""
    found = await asyncio.gather(*(event_log.first_readable_on([subjects.persona_created(pid)]) for pid in ids))
    stored = {pid: s for pid, s in zip(ids, found, strict=True)
              if s is not None and isinstance(s.event, PersonaCreated)}
    if any((s.event.persona.template_id, s.event.persona.persona_type) != (body.template_id, body.persona_type)
           for s in stored.values()):
        raise personas_key_reused()
    return stored


def personas_key_reused() -> ApiError:
    return ApiError(409, "idempotency_key_reused",
                    "This Idempotency-Key named personas asked for with another template, persona type or count: "
                    "a new request needs a new key", field="Idempotency-Key")


def personas_key_in_use() -> ApiError:
    return ApiError(409, "idempotency_key_in_use",
                    "Another request with this Idempotency-Key is making these personas now: ask again in a moment",
                    field="Idempotency-Key", headers={"Retry-After": "1"})


@router.get("/personas/{persona_id}", response_model=PersonaView, responses=responses(404, 422, 503))
async def get_persona(persona_id: PersonaIdPath, caller: Reader, models: ModelsDep, fence: FenceDep) -> PersonaView:
    doc = await models.personas.find_one({"_id": persona_id}, {"tenant": 1})
    if doc is None or not caller.owns(doc.get("tenant")):  # 404 before any wait
        raise not_found("persona", persona_id)
    await fence.personas([persona_id])  # a prompt the log already holds is in what is read next
    doc = await models.personas.find_one({"_id": persona_id})
    if doc is None:  # gone in between (a rebuild switching collections)
        raise not_found("persona", persona_id)
    return PersonaView.model_validate(doc, context=READING)


@router.get("/personas", response_model=PersonaList, responses=responses(404, 422, 503))
async def list_personas(
    models: ModelsDep, template_id: TemplateIdQuery, caller: Reader, fence: FenceDep,
    limit: int = Query(500, ge=1, le=1000, description="At most this many personas"),
    after: PersonaIdQuery | None = None,
) -> PersonaList:
    """The template's personas, oldest first, a page at a time: ``next_after`` (when more follow)
    goes in ``after`` for the next page."""
    await load_template(models, template_id, caller)
    mine: dict = {"template_id": template_id, **caller.only_mine()}
    if after is not None:  # after that persona in (created_at, id) order
        last = await models.personas.find_one({"_id": after, **mine}, ["created_at"])
        if last is None:
            raise ApiError(422, "invalid_request", f"Persona '{after}' is not one of this template's",
                           field="after", ids=[after])
        mine = {**mine, "$or": [{"created_at": {"$gt": last["created_at"]}},
                                {"created_at": last["created_at"], "_id": {"$gt": after}}]}
    page = [d async for d in models.personas.find(mine, ["_id"]).sort([("created_at", 1), ("_id", 1)])
            .limit(limit + 1)]
    more = len(page) > limit
    ids = [d["_id"] for d in page[:limit]]
    if ids:
        await fence.personas(ids)  # then read them: a prompt may have come in between
    docs = {d["_id"]: d async for d in models.personas.find({"_id": {"$in": ids}})}
    return PersonaList(personas=[PersonaView.model_validate(docs[i], context=READING) for i in ids if i in docs],
                       next_after=ids[-1] if more else None)
