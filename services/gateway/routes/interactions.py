"""Avatar interactions: linked to a persona, whose prompt they use."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter

from contracts.api import AvatarInteractionCreate, AvatarInteractionView
from contracts.events import AvatarInteractionCreated
from contracts.limits import is_blank
from services.adapters.ports import ReadModelsPort
from services.gateway.deps import (
    EventLogDep,
    FenceDep,
    InteractionIdPath,
    ModelsDep,
    Reader,
    ScenarioWriter,
    WaiterDep,
)
from services.gateway.errors import not_found, responses
from services.gateway.json_body import JSONBodyRoute

router = APIRouter(prefix="/avatar-interactions", tags=["avatar interactions"], route_class=JSONBodyRoute)


async def _view(doc: dict[str, Any], models: ReadModelsPort) -> AvatarInteractionView:
    """The interaction with its effective prompt: the linked persona's, read now."""
    own = doc.get("system_prompt")
    effective, source = (None, "none") if is_blank(own) else (own, "interaction")  # nothing that shows is none
    if doc.get("persona_id"):
        persona = await models.personas.find_one({"_id": doc["persona_id"]}, {"system_prompt": 1})
        if persona and not is_blank(persona.get("system_prompt")):
            effective, source = persona["system_prompt"], "persona"
    return AvatarInteractionView(
        **{k: doc.get(k) for k in ("id", "mode", "avatars", "languages", "persona_id", "system_prompt", "created_at")},
        effective_system_prompt=effective,
        prompt_source=source,
    )


@router.post("", status_code=201, response_model=AvatarInteractionView,
             responses=responses(404, 413, 422, 429, 503))
async def create_interaction(
    body: AvatarInteractionCreate, caller: ScenarioWriter, models: ModelsDep, event_log: EventLogDep,
    waiter: WaiterDep,
) -> AvatarInteractionView:
    if body.persona_id is not None:
        persona = await models.personas.find_one({"_id": body.persona_id}, {"tenant": 1})
        if persona is None or not caller.owns(persona.get("tenant")):
            raise not_found("persona", body.persona_id, field="persona_id")
    event = AvatarInteractionCreated(interaction_id=str(uuid.uuid4()), **body.model_dump(), **caller.stamp())
    await waiter.wait_for(await event_log.publish(event))
    doc = {"id": event.interaction_id, "created_at": event.occurred_at, **body.model_dump()}
    return await _view(doc, models)


@router.get("/{interaction_id}", response_model=AvatarInteractionView, responses=responses(404, 422, 503))
async def get_interaction(
    interaction_id: InteractionIdPath, caller: Reader, models: ModelsDep, fence: FenceDep,
) -> AvatarInteractionView:
    doc = await models.interactions.find_one({"_id": interaction_id})
    if doc is None or not caller.owns(doc.get("tenant")):
        raise not_found("avatar_interaction", interaction_id)
    if doc.get("persona_id"):
        await fence.personas([doc["persona_id"]])  # the persona's newest prompt, if the log holds one
    return await _view(doc, models)
