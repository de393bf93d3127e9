"""The event log's vocabulary.

Every event is a frozen model with the same envelope and a stable ``type``
string (never an import path). ``Event`` is the discriminated union of all of
them; :func:`parse_event` / :func:`encode_event` are the only (de)serialisers.
Each event knows its subject and its deduplication id (``Nats-Msg-Id``), so a
retried publish of the same fact is a no-op in JetStream.

Writers are strict, readers are tolerant: building an event refuses a field it
does not declare, while :func:`parse_event` ignores fields it does not know (a
newer producer may have added them), raises :class:`UnknownEvent` for a type or
version this code cannot read (consumers skip those and count them), and
:class:`UndecodableEvent` for anything else (consumers with an effect park it).
How an event may change is written in ``contracts/EVOLUTION.md``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from contracts import subjects
from contracts.domain import (
    JobPersona,
    JobResults,
    Mode,
    Persona,
    TemplateData,
    TokenUsage,
)
from contracts.limits import READING


def now() -> datetime:
    return datetime.now(UTC)


class Envelope(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    version: int = 1
    occurred_at: datetime = Field(default_factory=now)
    correlation_id: str | None = None
    causation_id: str | None = None

    def subject(self) -> str:
        raise NotImplementedError

    def dedup_id(self) -> str:
        """A deterministic id: publishing the same fact twice stores it once."""
        raise NotImplementedError


class Owned(BaseModel):
    """Who a command was given by: the tenant the created thing belongs to, and the API key that
    acted (its id, never the key), for audit. Both absent on events written before keys existed:
    those belong to the default tenant."""

    tenant: str | None = None
    actor: str | None = None


# --- templates, personas, interactions -------------------------------------------------


class TemplateCreated(Envelope, Owned):
    type: Literal["template.created"] = "template.created"
    template_id: str
    scenario_document: str
    template_data: TemplateData

    def subject(self) -> str:
        return subjects.template_created(self.template_id)

    def dedup_id(self) -> str:
        return f"template:{self.template_id}:created"


class PersonaCreated(Envelope, Owned):
    type: Literal["persona.created"] = "persona.created"
    persona: Persona

    def subject(self) -> str:
        return subjects.persona_created(self.persona.id)

    def dedup_id(self) -> str:
        return f"persona:{self.persona.id}:created"


class AvatarInteractionCreated(Envelope, Owned):
    type: Literal["interaction.created"] = "interaction.created"
    interaction_id: str
    mode: Mode
    avatars: list[Any] = Field(default_factory=list)
    languages: list[Any] = Field(default_factory=list)
    persona_id: str | None = None
    system_prompt: str | None = None

    def subject(self) -> str:
        return subjects.interaction_created(self.interaction_id)

    def dedup_id(self) -> str:
        return f"interaction:{self.interaction_id}:created"


# --- jobs -------------------------------------------------------------------------------


class JobEvent(Envelope):
    job_id: str


class JobRequested(JobEvent, Owned):
    type: Literal["job.requested"] = "job.requested"
    template_id: str
    template_data: TemplateData
    personas: list[JobPersona]
    deadline: datetime
    retry_of: str | None = None

    def subject(self) -> str:
        return subjects.job(self.job_id, "requested")

    def dedup_id(self) -> str:
        return f"job:{self.job_id}:requested"


class PersonaPromptRequested(JobEvent):
    """A work item: everything a worker needs, so it reads no database."""

    type: Literal["persona.prompt_requested"] = "persona.prompt_requested"
    persona_id: str
    mode: Mode
    template_id: str
    template_data: TemplateData
    persona: Persona
    deadline: datetime

    def subject(self) -> str:
        return subjects.job_persona(self.job_id, self.persona_id, "requested")

    def dedup_id(self) -> str:
        return f"job:{self.job_id}:persona:{self.persona_id}:requested"


class PersonaProgress(JobEvent):
    type: Literal["persona.progress"] = "persona.progress"
    persona_id: str
    persona_name: str | None = None
    mode: Mode | None = None
    status: Literal["processing"] = "processing"
    attempt: int = 1

    def subject(self) -> str:
        return subjects.job_persona(self.job_id, self.persona_id, "progress")

    def dedup_id(self) -> str:
        # Per attempt: a redelivered item's progress is a new fact, and it comes well
        # inside the duplicate window (which outlasts ack_wait).
        return f"job:{self.job_id}:persona:{self.persona_id}:progress:{self.attempt}"


class PersonaCompleted(JobEvent):
    type: Literal["persona.completed"] = "persona.completed"
    persona_id: str
    persona_name: str
    mode: Mode
    generation_mode: Mode
    prompt: str
    prompt_length: int
    provider: str
    model: str
    usage: TokenUsage = Field(default_factory=TokenUsage)

    def subject(self) -> str:
        return subjects.job_persona(self.job_id, self.persona_id, "completed")

    def dedup_id(self) -> str:
        return f"job:{self.job_id}:persona:{self.persona_id}:terminal"


class PersonaFailed(JobEvent):
    type: Literal["persona.failed"] = "persona.failed"
    persona_id: str
    persona_name: str
    mode: Mode
    error: str
    error_code: str
    attempts: int = 1

    def subject(self) -> str:
        return subjects.job_persona(self.job_id, self.persona_id, "failed")

    def dedup_id(self) -> str:
        # Shares the completed event's id: a persona ends once, whichever way.
        return f"job:{self.job_id}:persona:{self.persona_id}:terminal"


class JobCancelRequested(JobEvent, Owned):
    type: Literal["job.cancel_requested"] = "job.cancel_requested"

    def subject(self) -> str:
        return subjects.job(self.job_id, "cancel_requested")

    def dedup_id(self) -> str:
        return f"job:{self.job_id}:cancel_requested"


class JobFinished(JobEvent):
    """Base of the events that end a job; each carries the final results."""

    status: str
    results: JobResults
    error: str | None = None

    def dedup_id(self) -> str:
        # One end per job, whichever it is.
        return f"job:{self.job_id}:finished"


class JobCompleted(JobFinished):
    type: Literal["job.completed"] = "job.completed"
    status: Literal["completed", "failed"]

    def subject(self) -> str:
        return subjects.job(self.job_id, "completed")


class JobCancelled(JobFinished):
    type: Literal["job.cancelled"] = "job.cancelled"
    status: Literal["cancelled"] = "cancelled"

    def subject(self) -> str:
        return subjects.job(self.job_id, "cancelled")


class JobExpired(JobFinished):
    type: Literal["job.expired"] = "job.expired"
    status: Literal["expired"] = "expired"

    def subject(self) -> str:
        return subjects.job(self.job_id, "expired")


Event = Annotated[
    TemplateCreated
    | PersonaCreated
    | AvatarInteractionCreated
    | JobRequested
    | PersonaPromptRequested
    | PersonaProgress
    | PersonaCompleted
    | PersonaFailed
    | JobCancelRequested
    | JobCompleted
    | JobCancelled
    | JobExpired,
    Field(discriminator="type"),
]

EVENT_TYPES: tuple[type[Envelope], ...] = (
    TemplateCreated,
    PersonaCreated,
    AvatarInteractionCreated,
    JobRequested,
    PersonaPromptRequested,
    PersonaProgress,
    PersonaCompleted,
    PersonaFailed,
    JobCancelRequested,
    JobCompleted,
    JobCancelled,
    JobExpired,
)

_adapter: TypeAdapter[Event] = TypeAdapter(Event)

CURRENT_VERSION: dict[str, int] = {cls.model_fields["type"].default: 1 for cls in EVENT_TYPES}

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
# (type, version) -> a function turning that version's JSON object into the next version's.
# Empty while every event is at version 1: see contracts/EVOLUTION.md.
UPCASTERS: dict[tuple[str, int], Upcaster] = {}


class EventDecodeError(ValueError):
    """Stored bytes that do not become an event this code can use."""


class UnknownEvent(EventDecodeError):
    """A well-formed event of a type, or a version, this code does not know: skip it."""

    def __init__(self, type_: str, version: int) -> None:
        super().__init__(f"unknown event type {type_!r} version {version}")
        self.type = type_
        self.version = version


class UndecodableEvent(EventDecodeError):
    """Not an event this code can read (bad JSON, missing or malformed fields)."""


def _brief(exc: Exception, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "…"


def _upcast(obj: dict[str, Any], type_: str, version: int) -> dict[str, Any]:
    while version < CURRENT_VERSION[type_]:
        step = UPCASTERS.get((type_, version))
        if step is None:
            raise UndecodableEvent(f"no upcaster for {type_} version {version}")
        obj = {**step(obj), "version": version + 1}
        version += 1
    return obj


def parse_event(data: bytes | str) -> Event:
    """Decode one stored event, tolerantly (see the module's docstring)."""
    try:
        event = _adapter.validate_json(data, extra="ignore", context=READING)
    except ValidationError as exc:
        failure: Exception = exc
    else:
        if event.version == CURRENT_VERSION[event.type]:
            return event
        failure = UnknownEvent(event.type, event.version)
    # The slow path: say exactly why, upcasting an older version on the way.
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UndecodableEvent(f"not JSON: {_brief(exc)}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise UndecodableEvent("not an event: no 'type'") from None
    type_, version = obj["type"], obj.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise UndecodableEvent(f"{type_} has an invalid version {version!r}") from None
    if type_ not in CURRENT_VERSION or version > CURRENT_VERSION[type_]:
        raise UnknownEvent(type_, version) from None
    if version == CURRENT_VERSION[type_]:
        raise UndecodableEvent(f"{type_} does not fit its contract: {_brief(failure)}") from None
    try:
        return _adapter.validate_python(_upcast(obj, type_, version), extra="ignore", context=READING)
    except ValidationError as exc:
        raise UndecodableEvent(f"{type_} version {version} does not fit its contract: {_brief(exc)}") from None


def encode_event(event: Envelope) -> bytes:
    return event.model_dump_json().encode()


def caused_by(cause: Envelope, **fields: Any) -> dict[str, Any]:
    """Envelope fields for an event caused by ``cause``, in the same correlation."""
    return {
        "correlation_id": cause.correlation_id or getattr(cause, "job_id", None),
        "causation_id": cause.event_id,
        **fields,
    }

