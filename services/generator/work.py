"""What the generator decides: pure fan-out, and one persona's generation with retries."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal

import structlog

from contracts import subjects
from contracts.domain import generation_mode
from contracts.events import (
    JobRequested,
    PersonaCompleted,
    PersonaFailed,
    PersonaPromptRequested,
    caused_by,
)
from services.adapters.event_log import Precluded, Unless
from services.adapters.llm.base import GeneratedText, LLMError, Provider
from services.adapters.llm.limits import Limiter, estimated_tokens, limited
from services.generator.prompt_generators import generate_for_mode
from services.runtime import tracing
from services.runtime.metrics import Metrics

if TYPE_CHECKING:
    from services.adapters.ports import EventLogPort

log = structlog.get_logger()

Sleep = Callable[[float], Awaitable[None]]


def fan_out(job: JobRequested) -> list[PersonaPromptRequested]:
    """One work item per persona of the job."""
    return [
        PersonaPromptRequested(
            **caused_by(job),
            job_id=job.job_id,
            persona_id=jp.persona.id,
            mode=jp.mode,
            template_id=job.template_id,
            template_data=job.template_data,
            persona=jp.persona,
            deadline=job.deadline,
        )
        for jp in job.personas
    ]


def backoff(attempt: int, *, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff with full jitter for the ``attempt``-th retry (1-based)."""
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))


def failed(item: PersonaPromptRequested, error: LLMError, attempts: int) -> PersonaFailed:
    return PersonaFailed(
        **caused_by(item),
        job_id=item.job_id,
        persona_id=item.persona_id,
        persona_name=item.persona.name,
        mode=item.mode,
        error=error.message,
        error_code=error.code,
        attempts=attempts,
    )


async def persona_ended(event_log: EventLogPort, job_id: str, persona_id: str, *, leader: bool = False) -> bool:
    """Whether the log holds the persona's outcome (``PersonaCompleted`` or ``PersonaFailed``)."""
    ends = [subjects.job_persona(job_id, persona_id, end) for end in ("completed", "failed")]
    return await event_log.first_readable_on(ends, leader=leader) is not None


def while_running(job_id: str, request: int) -> Unless:
    """Nothing at the job's own level (``promptgen.job.<id>.*``) after its request, at ``request``:
    no cancel asked, no end."""
    return Unless(subjects.job(job_id, "*"), (subjects.job(job_id, "cancel_requested"), *subjects.job_ends(job_id)),
                  after=request)


async def request_seq(event_log: EventLogPort, job_id: str) -> int:
    """Where the job's request is in the log (0 if it no longer is: an outcome's first store is
    then refused, and looks)."""
    return await event_log.last_seq_on(subjects.job(job_id, "requested")) or 0


Stored = Literal["stored", "cancelled", "expired"]


async def store_outcome(event_log: EventLogPort, outcome: PersonaCompleted | PersonaFailed,
                        request: int | None = None) -> Stored:
    """Store a persona's outcome unless its job's cancel or end is stored first: ``stored``, or
    why not (``cancelled``, ``expired``). The log decides as it stores the outcome, so none
    follows a cancel or an expiry there: the job manager, which ends the job at either, has
    already counted each persona (an unfinished one cancelled, or failed as expired).
    ``request``: the sequence of the job's request, if known (else looked up)."""
    if request is None:
        request = await request_seq(event_log, outcome.job_id)
    try:
        await event_log.publish(outcome, unless=while_running(outcome.job_id, request))
    except Precluded as exc:
        # A persona's two ends share one Nats-Msg-Id: one stored before the cancel (this item's
        # earlier delivery's) makes this one its duplicate, stored, not cancelled.
        if await persona_ended(event_log, outcome.job_id, outcome.persona_id, leader=True):
            return "stored"
        why: Stored = "expired" if exc.subject == subjects.job(outcome.job_id, "expired") else "cancelled"
        log.info("outcome_dropped", outcome=outcome.type, because=why)
        return why
    return "stored"


def estimate_tokens(item: PersonaPromptRequested, expected_completion: int) -> int:
    """The template and the persona, plus the instructions around them (about 1,200 characters)."""
    chars = len(item.template_data.model_dump_json()) + len(item.persona.model_dump_json()) + 1200
    return estimated_tokens(chars, expected_completion)


async def generate_persona_prompt(
    item: PersonaPromptRequested,
    *,
    provider: Provider,
    max_attempts: int = 3,
    sleep: Sleep = asyncio.sleep,
    limiter: Limiter | None = None,
    expected_completion_tokens: int = 1000,
    metrics: Metrics | None = None,
) -> PersonaCompleted | PersonaFailed:
    """Write one persona's prompt. Transient LLM failures are retried with backoff
    (never sooner than the server's retry-after, which all workers then honour);
    permanent ones fail at once."""
    last: LLMError | None = None
    estimate = estimate_tokens(item, expected_completion_tokens)
    metrics = metrics or Metrics()  # counted nowhere when no one reads them
    for attempt in range(1, max_attempts + 1):

        async def call(attempt: int = attempt) -> GeneratedText:
            # One span per call: which model, how it ended, the tokens; never the prompt's text.
            with tracing.span("llm call", kind=tracing.SpanKind.CLIENT, **{
                "gen_ai.system": provider.name, "gen_ai.request.model": provider.model,
                "promptgen.job_id": item.job_id, "promptgen.persona_id": item.persona_id,
                "promptgen.mode": item.mode, "promptgen.attempt": attempt,
            }) as span:
                try:
                    out = await generate_for_mode(provider, item.template_data, item.persona, item.mode)
                except LLMError as exc:
                    span.set_attributes({"promptgen.outcome": "error", "error.type": exc.code})
                    raise
                if span.is_recording():
                    span.set_attributes({"promptgen.outcome": "ok", "gen_ai.response.model": out.model,
                                         "gen_ai.usage.input_tokens": out.usage.prompt_tokens,
                                         "gen_ai.usage.output_tokens": out.usage.completion_tokens})
                return out

        try:  # within the shared caps, counted, its tokens settled, a retry-after shared
            out = await limited(limiter, estimate, call, metrics=metrics, model=provider.model)
        except LLMError as exc:
            last = exc
            log.warning("llm_call_failed", error_code=exc.code, error=exc.message, attempt=attempt,
                        retryable=exc.retryable)
            if not exc.retryable or attempt == max_attempts:
                return failed(item, exc, attempt)
            metrics.llm_retries.labels(error_code=exc.code).inc()
            await sleep(max(exc.retry_after or 0.0, backoff(attempt)))
            continue
        return PersonaCompleted(
            **caused_by(item),
            job_id=item.job_id,
            persona_id=item.persona_id,
            persona_name=item.persona.name,
            mode=item.mode,
            generation_mode=generation_mode(item.mode),
            prompt=out.text,
            prompt_length=len(out.text),
            provider=provider.name,
            model=out.model,
            usage=out.usage,
        )
    assert last is not None
    return failed(item, last, max_attempts)
