"""Domain vocabulary shared by events, the HTTP API and the read models."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from contracts.limits import ENCODABLE, FreeFormObject, Id, StoredText

Mode = Literal["learn_mode", "try_mode", "assess_mode"]

PersonaStatus = Literal["queued", "processing", "completed", "failed", "cancelled"]
TERMINAL_PERSONA_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})

JobStatus = Literal["processing", "completed", "failed", "cancelled", "expired"]


# The error of a persona whose job passed its deadline first (error_code "expired").
EXPIRED_PERSONA_ERROR = "the job passed its deadline before this persona was generated"


def count_statuses(statuses: Iterable[str]) -> Counter[str]:
    """How many personas are in each status (a status none is in counts 0)."""
    return Counter(statuses)


def generation_mode(mode: Mode) -> Mode:
    """The mode a prompt is generated with.

    Try and assess share one prompt ("same persona, same prompt used twice"):
    both generate as ``assess_mode``; ``prompt_mode`` keeps what was asked.
    """
    return "learn_mode" if mode == "learn_mode" else "assess_mode"


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Role(Frozen):
    name: StoredText
    description: StoredText = ""


class TemplateData(Frozen):
    """What a scenario document becomes: the structured training template."""

    # No length caps: its size follows the document's (or the LLM's answer's). Its text must
    # be storable all the same.
    title: StoredText
    description: StoredText
    context: StoredText = ""
    learning_objectives: list[StoredText] = Field(default_factory=list)
    roles: list[Role] = Field(default_factory=list)
    success_criteria: list[StoredText] = Field(default_factory=list)


PersonaText = Annotated[str, StringConstraints(max_length=1000), ENCODABLE]


class PersonaDraft(Frozen):
    """A persona as a provider invents it, before it has an id."""

    # It comes from an LLM: its free-form parts have the caps of any input, so a bad answer
    # is refused (invalid_output), never stored.
    name: PersonaText
    age: int = Field(ge=1, le=120)
    role: PersonaText
    archetype: PersonaText
    detail_categories: FreeFormObject = Field(default_factory=dict)
    conversation_rules: FreeFormObject = Field(default_factory=dict)


PERSONA_TYPE_MAX_LENGTH = 100


class Persona(PersonaDraft):
    id: Id
    template_id: Id
    persona_type: Annotated[str, StringConstraints(max_length=PERSONA_TYPE_MAX_LENGTH), ENCODABLE]


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

    def cut_short(self) -> dict[str, PersonaResult]:
        """The personas a cancellation or an expiry ended: their outcome is stated here only
        (no event of their own said it; one the generator refused after the deadline did)."""
        return {pid: r for pid, r in self.personas.items() if r.status == "cancelled" or r.error_code == "expired"}
