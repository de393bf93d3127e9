"""Event -> read-model writes, and the process manager's decisions: pure, no servers."""

from __future__ import annotations

from datetime import timedelta

from services.projector.process_manager import decide_job_end, results_from_job
from services.projector.projections import project
from tests.samples import T0, every_event, job_requested


def _ops(event, seq=7):
    return [(coll, op._filter, op._doc, op._upsert) for coll, op in project(event, seq)]


def test_creations_are_idempotent_upserts():
    for event in every_event()[:4]:
        (coll, flt, doc, upsert), = _ops(event)
        assert upsert is True and set(doc) == {"$setOnInsert"}
        assert doc["$setOnInsert"]["_seq"] == 7


def test_updates_apply_only_to_older_documents():
    for event in every_event()[5:]:
        for coll, flt, doc, upsert in _ops(event, seq=42):
            assert flt["_seq"] == {"$lt": 42}, event.type
            assert doc["$set"]["_seq"] == 42
            assert not upsert


def test_completed_saves_the_prompt_on_the_persona_and_counts_tokens():
    completed = next(e for e in every_event() if e.type == "persona.completed")
    ops = {coll: doc for coll, _, doc, _ in _ops(completed)}
    assert ops["personas_v2"]["$set"]["system_prompt"] == "You are Dr. Smith."
    assert ops["personas_v2"]["$set"]["prompt_mode"] == "try_mode"
    assert ops["personas_v2"]["$set"]["prompt_generated_at"] == completed.occurred_at
    assert ops["prompt_jobs"]["$inc"] == {"usage.prompt_tokens": 10, "usage.completion_tokens": 5}


def test_work_items_change_no_read_model():
    item = next(e for e in every_event() if e.type == "persona.prompt_requested")
    assert project(item, 1) == []


def _job_doc(statuses, **extra):
    req = job_requested(pids=tuple(statuses))
    (_, op), = project(req, 1)
    doc = dict(op._doc["$setOnInsert"], _id=req.job_id)
    for pid, status in statuses.items():
        doc["personas"][pid]["status"] = status
        if status == "completed":
            doc["personas"][pid]["prompt_length"] = 10
    doc.update(extra)
    return doc


def test_job_completes_when_every_persona_ended_with_at_least_one_success():
    end = decide_job_end(_job_doc({"a": "completed", "b": "failed"}), T0)
    assert end.type == "job.completed" and end.status == "completed"
    assert end.results.successful == 1 and end.results.failed == 1 and end.results.total_personas == 2


def test_job_fails_when_no_persona_succeeded():
    end = decide_job_end(_job_doc({"a": "failed", "b": "failed"}), T0)
    assert end.status == "failed" and end.error


def test_running_job_does_not_end_before_its_deadline():
    assert decide_job_end(_job_doc({"a": "completed", "b": "processing"}), T0) is None


def test_overdue_job_expires_with_unfinished_personas_failed():
    doc = _job_doc({"a": "completed", "b": "processing"})
    end = decide_job_end(doc, doc["deadline"] + timedelta(seconds=1))
    assert end.type == "job.expired"
    assert end.results.personas["b"].status == "failed" and end.results.personas["b"].error_code == "expired"
    assert end.results.personas["a"].status == "completed"


def test_cancel_ends_unfinished_personas_cancelled():
    end = decide_job_end(_job_doc({"a": "completed", "b": "queued"}, cancel_requested_at=T0), T0)
    assert end.type == "job.cancelled"
    assert end.results.personas["b"].status == "cancelled" and end.results.cancelled == 1


def test_finished_job_is_never_ended_twice():
    assert decide_job_end(_job_doc({"a": "completed"}, status="completed"), T0) is None


def test_results_follow_the_requested_order():
    doc = _job_doc({"z": "completed", "a": "completed", "m": "failed"})
    assert list(results_from_job(doc).personas) == ["z", "a", "m"]
