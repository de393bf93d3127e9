"""HTTP request and response bodies of the gateway.

Paths and field names follow the specification exactly; where it is silent the
choices are documented in the README.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)
from pydantic.config import JsonDict

from contracts.domain import (
    PERSONA_TYPE_MAX_LENGTH,
    JobResults,
    JobStatus,
    Mode,
    Persona,
    PersonaStatus,
    TemplateData,
    TokenUsage,
)
from contracts.limits import (
    ENCODABLE,
    MAX_SAFE_NUMBER,
    MAX_SCENARIO_DOCUMENT_LENGTH,
    MAX_SYSTEM_PROMPT_LENGTH,
    NOT_BLANK,
    SHOWS,
    FreeFormList,
    Id,
    PatternKeys,
    is_blank,
)


def _a_json_integer(value: Any) -> Any:
    """What JSON Schema calls an integer (3 and 3.0; not true, not "3"): pydantic's lax mode
    would read the other two as numbers, and a client's bug as a request."""
    if isinstance(value, bool | str | bytes):
        raise ValueError("Input should be a valid integer")
    return value


JsonInt = Annotated[int, BeforeValidator(_a_json_integer)]


class Request(BaseModel):
    # Every constraint of a request is one its JSON Schema states too (see contracts.limits), so
    # what the schema accepts, validation accepts. No whitespace is stripped: the lengths the
    # schema states are the lengths checked.
    model_config = ConfigDict(extra="forbid")


# --- templates and personas ---------------------------------------------------------------


class AnalyzeScenarioRequest(Request):
    scenario_document: Annotated[
        str, StringConstraints(min_length=1, max_length=MAX_SCENARIO_DOCUMENT_LENGTH, pattern=NOT_BLANK), ENCODABLE,
        SHOWS,
    ]


class TemplateView(BaseModel):
    template_id: str
    template_data: TemplateData
    created_at: datetime | None = None


PERSONAS_PER_REQUEST = 20  # at most, in one generate-personas request


class GeneratePersonasRequest(Request):
    template_id: Id
    persona_type: Annotated[
        str, StringConstraints(min_length=1, max_length=PERSONA_TYPE_MAX_LENGTH, pattern=NOT_BLANK), ENCODABLE, SHOWS
    ]
    count: JsonInt = Field(ge=1, le=PERSONAS_PER_REQUEST)


class PersonaView(Persona):
    """A persona document of ``personas_v2``; prompt fields appear once generated."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    system_prompt: str | None = None
    prompt_mode: Mode | None = None
    prompt_generated_at: datetime | None = None


class GeneratePersonasResponse(BaseModel):
    template_id: str
    personas: list[PersonaView]


class PersonaList(BaseModel):
    personas: list[PersonaView]
    next_after: str | None = None  # more follow: the ``after`` of the next page


# --- prompt generation jobs ------------------------------------------------------------------


class GenerateFinalPromptsRequest(Request):
    # How many personas a job takes is a setting (PROMPTGEN_MAX_PERSONAS_PER_JOB): the gateway
    # checks it, and writes it into its OpenAPI document as maxItems / maxProperties. That every
    # persona has a mode is checked once the ids are known to exist (a 422 after any 404).
    template_id: Id
    persona_ids: list[Id] = Field(min_length=1, json_schema_extra={"uniqueItems": True})
    mode_mapping: Annotated[dict[Id, Mode], PatternKeys()]

    @field_validator("persona_ids")
    @classmethod
    def _no_duplicates(cls, ids: list[str]) -> list[str]:
        dupes = sorted(i for i, n in Counter(ids).items() if n > 1)
        if dupes:
            raise ValueError(f"duplicated persona ids: {', '.join(dupes)}")
        return ids


class GenerateFinalPromptsResponse(BaseModel):
    job_id: str
    message: str = "Prompt generation started"
    status: Literal["processing"] = "processing"
    sse_endpoint: str
    persona_count: int
    retry_of: str | None = None


class JobPersonaView(BaseModel):
    persona_id: str
    persona_name: str
    mode: Mode
    status: PersonaStatus
    prompt_length: int | None = None
    error: str | None = None
    error_code: str | None = None
    attempts: int | None = None


class JobView(BaseModel):
    """``GET /scenario/v2/job-status/{job_id}``: the polling alternative to SSE."""

    job_id: str
    status: JobStatus
    template_id: str
    personas: dict[str, JobPersonaView]
    total_personas: int
    completed: int
    failed: int
    cancelled: int = 0
    processing: int
    queued: int
    usage: TokenUsage = Field(default_factory=TokenUsage)
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    deadline: datetime | None = None
    retry_of: str | None = None
    error: str | None = None
    actor: str | None = Field(None, description="The id of the API key that started the job (never the key); "
                                                "null with auth off")
    tenant: str | None = Field(None, description="The tenant of that key; null with auth off")
    sse_endpoint: str
    results: JobResults | None = None


class JobSummary(BaseModel):
    job_id: str
    status: JobStatus
    template_id: str
    template_title: str | None = None
    total_personas: int
    completed: int
    failed: int
    cancelled: int = 0
    created_at: datetime
    finished_at: datetime | None = None
    retry_of: str | None = None


class JobList(BaseModel):
    jobs: list[JobSummary]


class V1PersonaPrompt(BaseModel):
    status: PersonaStatus
    mode: Mode
    persona_name: str
    system_prompt: str | None = None
    prompt_length: int | None = None
    error: str | None = None


class V1GenerateFinalPromptsResponse(BaseModel):
    """Deprecated synchronous V1 answer: waits for the whole job."""

    job_id: str
    status: JobStatus
    template_id: str
    personas: dict[str, V1PersonaPrompt]
    total_personas: int
    successful: int
    failed: int


class JobEventRecord(BaseModel):
    """One line of a job's audit history."""

    seq: int
    time: datetime
    subject: str
    type: str
    persona_id: str | None = None
    status: str | None = None
    error: str | None = None
    actor: str | None = Field(None, description="A command's API key id (never the key); null for events "
                                                "the system made, and with auth off")
    tenant: str | None = Field(None, description="A command's tenant; null as `actor` is")
    event: dict[str, Any]


class JobEventHistory(BaseModel):
    """One page of a job's history, oldest first."""

    job_id: str
    events: list[JobEventRecord]
    next_after: int | None = Field(
        None, description="Pass as `after` for the next page; null when there is no more (for now)"
    )


# --- avatar interactions -----------------------------------------------------------------------


# What _prompt_source checks, said in JSON Schema: a system_prompt with nothing that shows is none.
_PROMPT_SOURCE_SCHEMA: JsonDict = {"anyOf": [
    {"properties": {"mode": {"const": "learn_mode"}}},
    {"properties": {"persona_id": {"type": "string"}}, "required": ["persona_id"]},
    {"properties": {"system_prompt": {"type": "string", "pattern": NOT_BLANK}},
     "required": ["system_prompt"]},
]}


class AvatarInteractionCreate(Request):
    model_config = ConfigDict(json_schema_extra=_PROMPT_SOURCE_SCHEMA)

    mode: Mode
    avatars: FreeFormList = Field(default_factory=list)
    languages: FreeFormList = Field(default_factory=list)
    # before persona_id, whose check reads it (a field's validator sees the fields above it)
    system_prompt: Annotated[str, StringConstraints(max_length=MAX_SYSTEM_PROMPT_LENGTH), ENCODABLE] | None = None
    persona_id: Annotated[Id | None, Field(validate_default=True)] = None

    @field_validator("persona_id")
    @classmethod
    def _prompt_source(cls, persona_id: str | None, info: ValidationInfo) -> str | None:
        # The error names persona_id, what the client can add. An empty or blank prompt is no
        # prompt (the interaction would be stored with none). An invalid mode or prompt is its
        # own error, and this check is left out.
        if persona_id is None and "mode" in info.data and "system_prompt" in info.data:
            mode, prompt = info.data["mode"], info.data["system_prompt"]
            if mode != "learn_mode" and is_blank(prompt):
                raise ValueError(f"{mode} needs a persona_id (or an explicit system_prompt)")
        return persona_id


class AvatarInteractionView(BaseModel):
    id: str
    mode: Mode
    avatars: list[Any]
    languages: list[Any]
    persona_id: str | None = None
    system_prompt: str | None = None
    effective_system_prompt: str | None = Field(
        default=None,
        description="The prompt a conversation uses: the linked persona's, else the interaction's own.",
    )
    prompt_source: Literal["persona", "interaction", "none"] = "none"
    created_at: datetime | None = None


class FieldError(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    """Every error the API answers: a message a person can act on, a stable code, and where."""

    detail: str
    code: str
    field: str | None = Field(None, description="The field at fault, as a dotted path into the body")
    ids: list[str] | None = Field(None, description="The ids at fault (unknown, or of another template)")
    errors: list[FieldError] | None = Field(None, description="Every invalid field (422 only)")


class Identity(BaseModel):
    """Who the API key sent is (``GET /auth/whoami``)."""

    auth: bool = Field(description="Whether this gateway asks for keys; false: every request is the default tenant's")
    tenant: str
    key_id: str | None = Field(None, description="The key's id (never the key); null with auth off")
    scopes: list[str] = Field(description="What the key may do: jobs:read, jobs:write, scenarios:write, admin")


# --- operations: parked events ---------------------------------------------------------------


class ParkedEvent(BaseModel):
    """A message a consumer could not use, kept where an operator sees it and can re-apply it.

    ``consumer`` is who parked it (``projector``, ``job-manager``, ``generator-dispatcher``,
    ``generator-workers``, ``generator-dead-letters``); ``seq`` is the message's position in
    ``stream`` (the event log, except for dead-letter advisories)."""

    consumer: str
    stream: str
    seq: int
    subject: str
    error_kind: Literal["undecodable", "unstorable"]
    error: str
    first_bytes: str = Field(description="The start of the message, for a person to read")
    job_id: str | None = None
    persona_id: str | None = None
    parked_at: datetime


class ParkedEventList(BaseModel):
    parked: list[ParkedEvent]


# The consumers that park events (services.adapters.parked.PARKING_CONSUMERS, with their services)
ParkingConsumer = Literal["projector", "job-manager", "generator-dispatcher", "generator-workers",
                          "generator-dead-letters"]


class ReapplyRequest(Request):
    consumer: ParkingConsumer
    seqs: list[Annotated[int, Field(ge=1, le=MAX_SAFE_NUMBER)]] | None = Field(  # stream sequences
        None, min_length=1, max_length=10_000,
        description="Left out (or null): every event this consumer parked; else at least one")


class ReapplyResult(BaseModel):
    consumer: str
    reapplied: list[int]
    still_parked: list[ParkedEvent]
    not_parked: list[int] = Field(default_factory=list, description="Sequences asked for that were not parked")


class DiscardRequest(Request):
    consumer: ParkingConsumer
    seqs: list[Annotated[int, Field(ge=1, le=MAX_SAFE_NUMBER)]] = Field(  # stream sequences, named one by one
        ..., min_length=1, max_length=10_000, description="The parked events to drop from the list")
    reason: str | None = Field(None, max_length=500, description="Why, for the log line that records it")


class DiscardResult(BaseModel):
    consumer: str
    discarded: list[int] = Field(description="Records removed (the events themselves stay in the log)")
    not_parked: list[int] = Field(default_factory=list, description="Sequences asked for that were not parked")
