"""Prompt generators, providers and retries, with a scripted in-memory provider (a pure unit)."""

from __future__ import annotations

import pytest

from contracts.domain import TokenUsage
from services.adapters.llm.base import GeneratedText, LLMError
from services.adapters.llm.offline import OfflineProvider, analyze_document
from services.generator.prompt_generators import generate_for_mode
from services.generator.work import fan_out, generate_persona_prompt
from tests.samples import TEMPLATE, every_event, job_requested, persona


class ScriptedProvider:
    name, model = "scripted", "m"

    def __init__(self, script):
        self.script = list(script)
        self.briefs = []

    async def write_system_prompt(self, brief):
        self.briefs.append(brief)
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return GeneratedText(text=step, model="m", usage=TokenUsage(prompt_tokens=3, completion_tokens=2))


def _item():
    return next(e for e in every_event() if e.type == "persona.prompt_requested")


async def test_learn_mode_uses_the_template_only_and_try_assess_share_assess():
    provider = ScriptedProvider(["a", "b", "c"])
    await generate_for_mode(provider, TEMPLATE, persona(), "learn_mode")
    await generate_for_mode(provider, TEMPLATE, persona(), "try_mode")
    await generate_for_mode(provider, TEMPLATE, persona(), "assess_mode")
    learn, try_, assess = provider.briefs
    assert learn.kind == "learn" and learn.persona is None
    assert try_.kind == assess.kind == "persona" and try_.mode == assess.mode == "assess_mode"
    assert try_.messages == assess.messages


async def test_transient_failures_are_retried_then_succeed():
    sleeps = []

    async def sleep(s):
        sleeps.append(s)

    provider = ScriptedProvider([LLMError("llm_rate_limited", "429", retryable=True, retry_after=2.5),
                                 LLMError("llm_unavailable", "503", retryable=True), "the prompt"])
    out = await generate_persona_prompt(_item(), provider=provider, max_attempts=4, sleep=sleep)
    assert out.type == "persona.completed" and out.prompt == "the prompt" and out.prompt_length == 10
    assert sleeps[0] >= 2.5  # never sooner than the server's retry-after
    assert len(sleeps) == 2


async def test_permanent_failure_fails_at_once_with_its_code():
    provider = ScriptedProvider([LLMError("llm_auth", "bad key"), "never"])
    out = await generate_persona_prompt(_item(), provider=provider, max_attempts=4, sleep=None)
    assert out.type == "persona.failed" and out.error_code == "llm_auth" and out.attempts == 1


async def test_exhausted_retries_fail_with_the_last_cause():
    async def sleep(_):
        return None

    provider = ScriptedProvider([LLMError("llm_timeout", "slow", retryable=True)] * 3)
    out = await generate_persona_prompt(_item(), provider=provider, max_attempts=3, sleep=sleep)
    assert out.type == "persona.failed" and out.error_code == "llm_timeout" and out.attempts == 3


def test_fan_out_makes_one_work_item_per_persona_with_causation():
    job = job_requested(pids=("a", "b", "c"))
    items = fan_out(job)
    assert [i.persona_id for i in items] == ["a", "b", "c"]
    assert all(i.causation_id == job.event_id and i.correlation_id == job.job_id for i in items)
    assert len({i.dedup_id() for i in items}) == 3


async def test_offline_prompts_are_complete_and_deterministic():
    provider = OfflineProvider()
    a = await generate_for_mode(provider, TEMPLATE, persona(), "assess_mode")
    b = await generate_for_mode(provider, TEMPLATE, persona(), "assess_mode")
    assert a == b
    for part in ("Renewal negotiation", "Dr. Smith", "Uncover needs", "Buyer agrees to a follow-up",
                 "break character", "Do not give hints"):
        assert part in a.text
    learn = await generate_for_mode(provider, TEMPLATE, persona(), "learn_mode")
    assert "coach" in learn.text and "Dr. Smith" not in learn.text


def test_offline_analysis_reads_the_documents_structure():
    t = analyze_document("# Title here\nIntro sentence. More.\n\n## Goals\n- one\n- two\n\n## Participants\n"
                         "- Nurse: the learner\n- Patient - anxious\n")
    assert t.title == "Title here" and t.learning_objectives == ["one", "two"]
    assert [(r.name, r.description) for r in t.roles] == [("Nurse", "the learner"), ("Patient", "anxious")]


def test_offline_analysis_knows_headings_of_either_form():
    t = analyze_document("Title\n## Objectives ##\n- one\nRoles :\n- Nurse: the learner\n"
                         "   Success criteria:\n- calm\n")
    assert t.learning_objectives == ["one"] and [r.name for r in t.roles] == ["Nurse"]
    assert t.success_criteria == ["calm"]


@pytest.mark.timeout(30)  # the pattern before took minutes on the first, and hours on the others
@pytest.mark.parametrize("document", ["T\n# a" + " " * 3_000 + "b", "T\n# a" + " " * 199_000 + "b",
                                      "T\n" + " " * 199_000 + "x", "T\n" + "a:" * 99_000])
def test_offline_analysis_takes_a_time_in_line_with_the_document(document):
    """The offline provider runs on the gateway's event loop: a 3 KB document once held it 30 s."""
    assert analyze_document(document).title == "T"


async def test_offline_personas_are_distinct_and_never_the_learner():
    t = analyze_document("# X\n\n## Roles\n- Nurse: the learner\n- Patient - anxious\n")
    drafts = (await OfflineProvider().generate_personas(t, "assess", [f"seed{i}" for i in range(10)])).value
    assert {d.role for d in drafts} == {"Patient"}
    assert len({d.name for d in drafts}) > 5



async def test_a_large_job_publishes_a_small_first_chunk_so_workers_start_early():
    """Each chunk reaches the server once all of it is encoded: the first is small, so the
    first work items do not wait behind hundreds of others; every item goes once, in order."""
    import asyncio

    from services.generator.consumers import dispatch

    class Log:
        def __init__(self) -> None:
            self.in_flight, self.chunks, self.published = 0, [], []

        async def publish(self, event) -> None:
            self.in_flight += 1
            await asyncio.sleep(0)  # every publish of a chunk starts before any ends
            if self.in_flight:
                self.chunks.append(self.in_flight)
                self.in_flight = 0
            self.published.append(event.persona_id)

        async def first_readable_on(self, subjects_) -> None:  # the job has not ended
            return None

        async def last_seq_on(self, subject) -> None:  # nor been dispatched before
            return None

    log = Log()
    job = job_requested("big", tuple(f"p{i}" for i in range(600)))
    assert await dispatch(job, log) == 600
    assert log.chunks == [16, 256, 256, 72]
    assert log.published == [f"p{i}" for i in range(600)]
