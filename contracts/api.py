"""HTTP request and response bodies of the gateway.

Paths and field names follow the specification exactly; where it is silent the
choices are documented in the README.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from contracts.domain import (
    JobResults,
    JobStatus,
    Mode,
    Persona,
    PersonaStatus,
    TemplateData,
    TokenUsage,
)


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


# --- templates and personas ---------------------------------------------------------------


class AnalyzeScenarioRequest(Request):
    scenario_document: str = Field(min_length=1, max_length=200_000)


class TemplateView(BaseModel):
    template_id: str
    template_data: TemplateData
    created_at: datetime | None = None


class GeneratePersonasRequest(Request):
    template_id: str = Field(min_length=1)
    persona_type: str = Field(min_length=1, max_length=100)
    count: int = Field(ge=1, le=20)


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


# --- prompt generation jobs ------------------------------------------------------------------


class GenerateFinalPromptsRequest(Request):
    template_id: str = Field(min_length=1)
    persona_ids: list[str] = Field(min_length=1)
    mode_mapping: dict[str, Mode]

    @field_validator("persona_ids")
    @classmethod
    def _no_duplicates(cls, ids: list[str]) -> list[str]:
        seen: set[str] = set()
        dupes = sorted({i for i in ids if i in seen or seen.add(i)})
        if dupes:
            raise ValueError(f"duplicated persona ids: {', '.join(dupes)}")
        if any(not i for i in ids):
            raise ValueError("persona ids must not be empty strings")
        return ids

    @model_validator(mode="after")
    def _every_persona_has_a_mode(self) -> GenerateFinalPromptsRequest:
        missing = [i for i in self.persona_ids if i not in self.mode_mapping]
        if missing:
            raise ValueError(f"mode_mapping has no mode for persona ids: {', '.join(missing)}")
        return self


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
    event: dict[str, Any]


class JobEventHistory(BaseModel):
    """One page of a job's history, oldest first."""

    job_id: str
    events: list[JobEventRecord]
    next_after: int | None = Field(
        None, description="Pass as `after` for the next page; null when there is no more (for now)"
    )


# --- avatar interactions -----------------------------------------------------------------------


class AvatarInteractionCreate(Request):
    mode: Mode
    avatars: list[Any] = Field(default_factory=list)
    languages: list[Any] = Field(default_factory=list)
    persona_id: str | None = None
    system_prompt: str | None = None

    @model_validator(mode="after")
    def _prompt_source(self) -> AvatarInteractionCreate:
        if self.mode != "learn_mode" and self.persona_id is None and self.system_prompt is None:
            raise ValueError(f"{self.mode} needs a persona_id (or an explicit system_prompt)")
        return self


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


class ErrorBody(BaseModel):
    detail: str
    code: str
    field: str | None = None
    ids: list[str] | None = None


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


class ReapplyRequest(Request):
    consumer: str = Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z-]*$")
    seqs: list[int] | None = Field(None, max_length=10_000, description="None: every event this consumer parked")


class ReapplyResult(BaseModel):
    consumer: str
    reapplied: list[int]
    still_parked: list[ParkedEvent]
