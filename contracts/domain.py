"""Domain vocabulary shared by events, the HTTP API and the read models."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Mode = Literal["learn_mode", "try_mode", "assess_mode"]

PersonaStatus = Literal["queued", "processing", "completed", "failed", "cancelled"]
TERMINAL_PERSONA_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})

JobStatus = Literal["processing", "completed", "failed", "cancelled", "expired"]


# The error of a persona whose job passed its deadline first (error_code "expired").
EXPIRED_PERSONA_ERROR = "the job passed its deadline before this persona was generated"


def generation_mode(mode: Mode) -> Mode:
    """The mode a prompt is generated with.

    Try and assess share one prompt ("same persona, same prompt used twice"):
    both generate as ``assess_mode``; ``prompt_mode`` keeps what was asked.
    """
    return "learn_mode" if mode == "learn_mode" else "assess_mode"


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Role(Frozen):
    name: str
    description: str = ""


class TemplateData(Frozen):
    """What a scenario document becomes: the structured training template."""

    title: str
    description: str
    context: str = ""
    learning_objectives: list[str] = Field(default_factory=list)
    roles: list[Role] = Field(default_factory=list)
    success_criteria: list[str] = Field(default_factory=list)


class PersonaDraft(Frozen):
    """A persona as a provider invents it, before it has an id."""

    name: str
    age: int = Field(ge=1, le=120)
    role: str
    archetype: str
    detail_categories: dict[str, Any] = Field(default_factory=dict)
    conversation_rules: dict[str, Any] = Field(default_factory=dict)


class Persona(PersonaDraft):
    id: str
    template_id: str
    persona_type: str


class TokenUsage(Frozen):
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
        )


class JobPersona(Frozen):
    """One persona of a job, snapshotted when the job was requested."""

    persona: Persona
    mode: Mode


class PersonaResult(Frozen):
    """One persona's line in a job's ``results`` (the seed's shape, plus errors)."""

    status: PersonaStatus
    mode: Mode
    persona_name: str
    prompt_length: int | None = None
    error: str | None = None
    error_code: str | None = None


class JobResults(Frozen):
    """The ``results`` object of the specification."""

    template_id: str
    template_data: TemplateData
    personas: dict[str, PersonaResult]
    total_personas: int
    successful: int
    failed: int
    cancelled: int = 0
    usage: TokenUsage = Field(default_factory=TokenUsage)
