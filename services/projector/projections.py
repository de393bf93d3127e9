"""How each event changes the read models: pure functions, one per event type.

Every write is idempotent. Creations are upserts with ``$setOnInsert``; updates
carry the event's stream sequence and apply only to a document whose ``_seq``
is older, so replaying an event (after a crash, or in a rebuild) changes nothing.
Timestamps come from the event, never the clock, so a rebuild is identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from functools import singledispatch
from typing import Any

from contracts import subjects
from contracts.domain import TERMINAL_PERSONA_STATUSES
from contracts.events import (
    AvatarInteractionCreated,
    Envelope,
    JobCancelRequested,
    JobFinished,
    JobRequested,
    PersonaCompleted,
    PersonaCreated,
    PersonaFailed,
    PersonaProgress,
    TemplateCreated,
)


@dataclass(frozen=True, slots=True)
class Change:
    """An idempotent change of one document (``many``: of every document ``filter`` matches),
    in MongoDB's update language: the read-model adapter sends it as is, and the in-memory
    fold (:mod:`services.projector.memory_fold`) interprets the same."""

    filter: dict[str, Any]
    update: dict[str, Any]
    upsert: bool = False
    many: bool = False


Write = tuple[str, Change]  # (collection, change)

# The read models: the collections the projections write (the specification names two).
TEMPLATES = "templates"
PERSONAS = "personas_v2"
JOBS = "prompt_jobs"
JOB_PERSONAS = "prompt_job_personas"  # one document per persona of a job
INTERACTIONS = "avatar_interactions"
READ_MODELS = (TEMPLATES, PERSONAS, JOBS, JOB_PERSONAS, INTERACTIONS)
_OPEN = {"$nin": sorted(TERMINAL_PERSONA_STATUSES)}


def _create(collection: str, _id: str, seq: int, fields: dict[str, Any]) -> Write:
    return collection, Change({"_id": _id}, {"$setOnInsert": {**fields, "_seq": seq}}, upsert=True)


def _newer(_id: str, seq: int, **conditions: Any) -> dict[str, Any]:
    return {"_id": _id, "_seq": {"$lt": seq}, **conditions}


@singledispatch
def project(event: Envelope, seq: int) -> list[Write]:
    """Events with no read-model effect (work items, for example)."""
    return []


@project.register
def project_template_created(event: TemplateCreated, seq: int) -> list[Write]:
    return [
        _create(
            TEMPLATES,
            event.template_id,
            seq,
            {
                "template_id": event.template_id,
                "template_data": event.template_data.model_dump(mode="json"),
                "scenario_document": event.scenario_document,
                "tenant": event.tenant,
                "created_at": event.occurred_at,
            },
        )
    ]


@project.register
def project_persona_created(event: PersonaCreated, seq: int) -> list[Write]:
    persona = event.persona.model_dump(mode="json")
    fields = {**persona, "tenant": event.tenant, "created_at": event.occurred_at}
    return [_create(PERSONAS, event.persona.id, seq, fields)]


@project.register
def project_interaction_created(event: AvatarInteractionCreated, seq: int) -> list[Write]:
    return [
        _create(
            INTERACTIONS,
            event.interaction_id,
            seq,
            {
                "id": event.interaction_id,
                "mode": event.mode,
                "avatars": event.avatars,
                "languages": event.languages,
                "persona_id": event.persona_id,
                "system_prompt": event.system_prompt,
                "tenant": event.tenant,
                "created_at": event.occurred_at,
            },
        )
    ]


def job_persona_key(job_id: str, persona_id: str) -> str:
    return f"{job_id}:{persona_id}"


@project.register
def project_job_requested(event: JobRequested, seq: int) -> list[Write]:
    job = _create(
        JOBS,
        event.job_id,
        seq,
        {
            "job_id": event.job_id,
            "status": "processing",
            "template_id": event.template_id,
            "template_data": event.template_data.model_dump(mode="json"),
            "total_personas": len(event.personas),
            "created_at": event.occurred_at,
            "updated_at": event.occurred_at,
            "deadline": event.deadline,
            "retry_of": event.retry_of,
            "tenant": event.tenant,
            "actor": event.actor,
        },
    )
    # One small document per persona of the job: a persona's progress never rewrites the job.
    personas = [
        _create(
            JOB_PERSONAS,
            job_persona_key(event.job_id, jp.persona.id),
            seq,
            {
                "job_id": event.job_id,
                "persona_id": jp.persona.id,
                "persona_name": jp.persona.name,
                "mode": jp.mode,
                "status": "queued",
                "order": i,
                "updated_at": event.occurred_at,
            },
        )
        for i, jp in enumerate(event.personas)
    ]
    return [job, *personas]


def _job_persona(event: PersonaProgress | PersonaCompleted | PersonaFailed, seq: int, changes: dict[str, Any]) -> Write:
    key = job_persona_key(event.job_id, event.persona_id)
    return (
        JOB_PERSONAS,
        Change(_newer(key, seq, status=_OPEN),
                  {"$set": {**changes, "updated_at": event.occurred_at, "_seq": seq}}),
    )


@project.register
def project_persona_progress(event: PersonaProgress, seq: int) -> list[Write]:
    return [_job_persona(event, seq, {"status": "processing", "attempts": event.attempt})]


@project.register
def project_persona_completed(event: PersonaCompleted, seq: int) -> list[Write]:
    return [
        (
            PERSONAS,
            Change(
                _newer(event.persona_id, seq),
                {"$set": {
                    "system_prompt": event.prompt,
                    "prompt_mode": event.mode,
                    "prompt_generated_at": event.occurred_at,
                    "prompt_job_id": event.job_id,
                    "prompt_model": event.model,
                    "_seq": seq,
                }},
            ),
        ),
        _job_persona(event, seq, {
            "status": "completed",
            "prompt_length": event.prompt_length,
            "model": event.model,
            "usage": event.usage.model_dump(),
        }),
    ]


@project.register
def project_persona_failed(event: PersonaFailed, seq: int) -> list[Write]:
    return [_job_persona(event, seq, {
        "status": "failed", "error": event.error, "error_code": event.error_code, "attempts": event.attempts,
    })]


@project.register
def project_cancel_requested(event: JobCancelRequested, seq: int) -> list[Write]:
    return [
        (
            JOBS,
            Change(
                _newer(event.job_id, seq),
                {"$set": {"cancel_requested_at": event.occurred_at, "updated_at": event.occurred_at,
                          "_seq": seq}},
            ),
        )
    ]


@project.register
def project_job_finished(event: JobFinished, seq: int) -> list[Write]:
    writes: list[Write] = [
        (
            JOBS,
            Change(
                _newer(event.job_id, seq, status="processing"),
                {"$set": {
                    "status": event.status,
                    "results": event.results.model_dump(mode="json"),
                    "error": event.error,
                    "finished_at": event.occurred_at,
                    "updated_at": event.occurred_at,
                    "_seq": seq,
                }},
            ),
        )
    ]
    # Personas a cancellation or expiry cut short take their final state from the results.
    for pid, r in event.results.cut_short().items():
        writes.append((
            JOB_PERSONAS,
            Change(
                _newer(job_persona_key(event.job_id, pid), seq, status=_OPEN),
                {"$set": {"status": r.status, "error": r.error, "error_code": r.error_code,
                          "updated_at": event.occurred_at, "_seq": seq}},
            ),
        ))
    return writes


def retention(event: JobFinished, keep: timedelta) -> dict[str, Any]:
    """When a finished job's view leaves MongoDB: ``keep`` after its end. Its events stay in the log.

    The job document was created to leave ``keep`` after its deadline (:func:`writes_for`); the
    end only brings that time forward (``$min``), in the same update as the end's status: one
    rewrite of the job document (which holds the job's results), not two. Whenever that update
    finds the job open, the time moves with the status; when it does not, an earlier end
    already brought it forward (a later duplicate, from a process whose clock is behind, or a
    parked end re-applied after a later event, leave it there: at most the job's deadline
    later than that end would have made it). Its persona documents carry no time of
    their own: they leave with their job
    (:meth:`~services.adapters.read_models.ReadModels.drop_expired_jobs`), so a job's end
    rewrites none of them."""
    return {"$min": {"expire_at": event.occurred_at + keep}}


def _expiring(write: Write, at: Any) -> Write:
    collection, change = write
    if collection != JOBS or not is_creation(change):
        return write
    return collection, Change(change.filter, {"$setOnInsert": {**change.update["$setOnInsert"], "expire_at": at}},
                              upsert=True)


def writes_for(event: Envelope, seq: int, job_retention: timedelta) -> list[Write]:
    """Everything one event writes: its projection, and a job's retention (set when it is
    requested, brought forward when it ends)."""
    writes = project(event, seq)
    if isinstance(event, JobRequested):
        writes = [_expiring(w, event.deadline + job_retention) for w in writes]
    elif isinstance(event, JobFinished):
        (collection, end), *rest = writes  # the job document's end comes first
        assert collection == JOBS, "a job's end writes its job document first"
        writes = [(collection, Change(end.filter, {**end.update, **retention(event, job_retention)})), *rest]
    return writes


def writers_of(collection: str, _id: str) -> list[str]:
    """The subjects (NATS filters) of every event whose projection can write the document
    ``_id`` of ``collection``: what re-applying a parked event that wrote it folds again
    (tests/unit/test_projections.py holds every projection to it)."""
    if collection == TEMPLATES:
        return [subjects.template_created(_id)]
    if collection == INTERACTIONS:
        return [subjects.interaction_created(_id)]
    if collection == PERSONAS:  # created, then given each prompt a job writes for it
        return [subjects.persona_created(_id), subjects.job_persona("*", _id, "completed")]
    if collection == JOBS:
        return [subjects.job_history(_id)]
    if collection == JOB_PERSONAS:
        return [subjects.job_history(_id.split(":", 1)[0])]
    raise ValueError(f"no read model is called {collection!r}")


def is_creation(change: Change) -> bool:
    """A ``$setOnInsert`` upsert by ``_id``: creates the document, or does nothing."""
    return (change.upsert and not change.many and set(change.update) == {"$setOnInsert"}
            and set(change.filter) == {"_id"})


def split_creations(changes: list[Change]) -> tuple[list[dict[str, Any]], list[Change]]:
    """The documents of creations that can be written as plain inserts, and the other changes
    in order. A creation nothing before it in ``changes`` touches (no change of its document,
    no update of many documents it would be one of) may be written first; as an insert it has
    the upsert's effect (a document already there is a duplicate, left as it is) and costs
    MongoDB far less."""
    docs: list[dict[str, Any]] = []
    rest: list[Change] = []
    touched: set[Any] = set()
    many: list[dict[str, Any]] = []  # filters of the updates of many documents so far
    for change in changes:
        if change.many:
            many.append(change.filter)
            rest.append(change)
            continue
        _id = change.filter.get("_id")
        if is_creation(change) and _id not in touched:
            doc = {"_id": _id, **change.update["$setOnInsert"]}
            if not any(_may_match(doc, flt) for flt in many):
                docs.append(doc)
                touched.add(_id)
                continue
        rest.append(change)
        touched.add(_id)
    return docs, rest


def _may_match(doc: dict[str, Any], flt: dict[str, Any]) -> bool:
    """Whether ``doc`` may match ``flt`` (certainly not only when an equality differs)."""
    return all(isinstance(v, dict) or doc.get(k) == v for k, v in flt.items())


def coalesce(changes: list[Change]) -> list[Change]:
    """Fewer writes, same effect: successive guarded ``$set`` updates of one document
    (same conditions) become one update guarded by the last one's ``_seq``.

    Sound because events apply in log order and a batch holds every event after the
    checkpoint (a re-apply's batch: every event that writes the documents it re-applies for,
    and others already applied, whose merged updates find their documents as the last of
    them left them or newer). A document older than the first update takes them all, as it would one by
    one; one that a crashed predecessor had already brought part-way (its ``_seq`` between
    the first and the last) takes them all again, and the updates it had seen rewrite the
    values it already holds; one at the last ``_seq`` or newer is left alone. An update
    whose ``$set`` could break the next one's conditions (a terminal status) is not merged."""
    out: list[Change] = []
    last: dict[object, int] = {}  # document id -> index in out of its last update
    for change in changes:
        key = None if change.many else change.filter.get("_id")
        i = last.get(key) if key is not None else None
        if i is not None and _mergeable(out[i], change):
            prev = out[i]
            out[i] = Change({**prev.filter, "_seq": change.filter["_seq"]},
                            {"$set": {**prev.update["$set"], **change.update["$set"]}})
            continue
        if key is not None:
            last[key] = len(out)
        out.append(change)
    return out


def _conditions(update_filter: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in update_filter.items() if k not in ("_id", "_seq")}


def _still_holds(condition: Any, value: Any) -> bool:
    if isinstance(condition, dict):
        if set(condition) == {"$nin"}:
            return value not in condition["$nin"]
        return False  # an operator we do not reason about: do not merge
    return bool(value == condition)


def _mergeable(first: Change, then: Change) -> bool:
    if first.many or then.many or first.upsert or then.upsert:
        return False
    if set(first.update) != {"$set"} or set(then.update) != {"$set"}:
        return False
    if "_seq" not in first.filter or "_seq" not in then.filter:
        return False
    if first.filter["_id"] != then.filter["_id"] or _conditions(first.filter) != _conditions(then.filter):
        return False
    written = first.update["$set"]
    return all(_still_holds(cond, written[k]) for k, cond in _conditions(then.filter).items() if k in written)
