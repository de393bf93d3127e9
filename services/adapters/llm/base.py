"""The seam between promptgen and a language model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, Literal, Protocol, TypeVar

from contracts.domain import Mode, Persona, PersonaDraft, TemplateData, TokenUsage

Message = dict[str, str]


def approx_tokens(chars: int) -> int:
    """About how many tokens ``chars`` characters of text make (four to a token)."""
    return max(1, chars // 4)


@dataclass(frozen=True)
class PromptBrief:
    """Everything needed to write one system prompt: the structured inputs and
    the chat messages an LLM is given for them."""

    kind: Literal["learn", "persona"]
    mode: Mode
    template: TemplateData
    persona: Persona | None
    messages: list[Message] = field(default_factory=list)


@dataclass(frozen=True)
class GeneratedText:
    text: str
    model: str
    usage: TokenUsage = field(default_factory=TokenUsage)


T = TypeVar("T")


@dataclass(frozen=True)
class Answer(Generic[T]):
    """A structured answer, with the model that gave it and the tokens it took (for the
    metrics and the shared token budget)."""

    value: T
    model: str
    usage: TokenUsage = field(default_factory=TokenUsage)


class LLMError(Exception):
    """A classified failure: a stable ``code`` and whether trying again can help."""

    def __init__(
        self, code: str, message: str, *, retryable: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after


class Provider(Protocol):
    name: str
    model: str

    async def analyze_scenario(self, document: str) -> Answer[TemplateData]: ...

    async def generate_personas(
        self, template: TemplateData, persona_type: str, seeds: list[str]
    ) -> Answer[list[PersonaDraft]]: ...

    async def write_system_prompt(self, brief: PromptBrief) -> GeneratedText: ...

    async def check(self) -> None:
        """Raise :class:`LLMError` if the model cannot be reached with this configuration."""

    async def aclose(self) -> None: ...
