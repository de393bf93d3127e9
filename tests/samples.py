"""Sample domain objects and one event of every type, for unit tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from contracts.domain import JobPersona, JobResults, Persona, PersonaResult, Role, TemplateData, TokenUsage
from contracts.events import (
    AvatarInteractionCreated,
    JobCancelled,
    JobCancelRequested,
    JobCompleted,
    JobExpired,
    JobRequested,
    PersonaCompleted,
    PersonaCreated,
    PersonaFailed,
    PersonaProgress,
    PersonaPromptRequested,
    TemplateCreated,
)

# Now (to the second): a sample job runs until its deadline half an hour ahead, and its views are
# kept a retention after that, so no retention sweep takes them away mid-test.
T0 = datetime.now(UTC).replace(microsecond=0)

TEMPLATE = TemplateData(
    title="Renewal negotiation",
    description="A sales rep renews a contract with a skeptical buyer.",
    context="The buyer had two outages last quarter.",
    learning_objectives=["Uncover needs", "Handle objections"],
    roles=[Role(name="Sales rep", description="the learner"), Role(name="Buyer", description="skeptical")],
    success_criteria=["Buyer agrees to a follow-up"],
)


def persona(pid: str = "p1", name: str = "Dr. Smith") -> Persona:
    return Persona(id=pid, template_id="t1", persona_type="assess_mode_character", name=name, age=45,
                   role="Buyer", archetype="SKEPTIC", detail_categories={"background": "procurement lead"},
                   conversation_rules={"never": ["break character"]})


def results(statuses: dict[str, str]) -> JobResults:
    rs = {pid: PersonaResult(status=s, mode="assess_mode", persona_name=pid,
                             prompt_length=100 if s == "completed" else None,
                             error=None if s == "completed" else "LLM timeout")
          for pid, s in statuses.items()}
    ok = sum(1 for s in statuses.values() if s == "completed")
    return JobResults(template_id="t1", template_data=TEMPLATE, personas=rs, total_personas=len(rs),
                      successful=ok, failed=len(rs) - ok)


def job_requested(job_id: str = "j1", pids: tuple[str, ...] = ("p1", "p2")) -> JobRequested:
    return JobRequested(job_id=job_id, correlation_id=job_id, template_id="t1", template_data=TEMPLATE,
                        personas=[JobPersona(persona=persona(p, f"Name {p}"), mode="try_mode") for p in pids],
                        deadline=T0 + timedelta(minutes=30), occurred_at=T0)


def finished_job(job_id: str, pids: tuple[str, ...] = ("p1", "p2")) -> list:
    """A job requested now (its deadline half an hour ahead) and every persona of it completed:
    what a job manager ends as completed."""
    request = job_requested(job_id, pids).model_copy(update={"deadline": datetime.now(UTC) + timedelta(minutes=30)})
    return [request] + [PersonaCompleted(
        job_id=job_id, persona_id=p, persona_name=p, mode="try_mode", generation_mode="try_mode",
        prompt=f"You are {p}.", prompt_length=11, provider="offline", model="m") for p in pids]


def every_event() -> list:
    p = persona()
    return [
        TemplateCreated(template_id="t1", scenario_document="doc", template_data=TEMPLATE),
        PersonaCreated(persona=p),
        AvatarInteractionCreated(interaction_id="i1", mode="try_mode", avatars=["a"], languages=["en"],
                                 persona_id="p1"),
        job_requested(),
        PersonaPromptRequested(job_id="j1", persona_id="p1", mode="try_mode", template_id="t1",
                               template_data=TEMPLATE, persona=p, deadline=T0),
        PersonaProgress(job_id="j1", persona_id="p1", persona_name="Dr. Smith", mode="try_mode"),
        PersonaCompleted(job_id="j1", persona_id="p1", persona_name="Dr. Smith", mode="try_mode",
                         generation_mode="assess_mode", prompt="You are Dr. Smith.", prompt_length=18,
                         provider="offline", model="m", usage=TokenUsage(prompt_tokens=10, completion_tokens=5)),
        PersonaFailed(job_id="j1", persona_id="p2", persona_name="Name p2", mode="try_mode", error="LLM timeout",
                      error_code="llm_timeout", attempts=3),
        JobCancelRequested(job_id="j1"),
        JobCompleted(job_id="j1", status="completed", results=results({"p1": "completed", "p2": "failed"})),
        JobCancelled(job_id="j1", results=results({"p1": "completed", "p2": "cancelled"})),
        JobExpired(job_id="j1", results=results({"p1": "completed", "p2": "failed"})),
    ]


CREATIONS = ("template.created", "persona.created", "interaction.created", "job.requested")


def sample(type_: str):
    """The sample event of ``type_`` (picked by its type, never by its place in a list)."""
    return next(e for e in every_event() if e.type == type_)
