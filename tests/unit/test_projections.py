"""Event -> read-model writes, and the process manager's decisions: pure, no servers."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.projector.process_manager import decide_job_end, results_from_job
from services.projector.projections import project
from tests.samples import CREATIONS, T0, every_event, job_requested, sample


def _ops(event, seq=7):
    return [(coll, c.filter, c.update, c.upsert) for coll, c in project(event, seq)]


def test_creations_are_idempotent_upserts():
    for event in map(sample, CREATIONS):
        for _coll, _flt, doc, upsert in _ops(event):
            assert upsert is True and set(doc) == {"$setOnInsert"}
            assert doc["$setOnInsert"]["_seq"] == 7


def test_updates_apply_only_to_older_documents():
    for event in (e for e in every_event() if e.type not in CREATIONS and e.type != "persona.prompt_requested"):
        for _coll, flt, doc, upsert in _ops(event, seq=42):
            assert flt["_seq"] == {"$lt": 42}, event.type
            assert doc["$set"]["_seq"] == 42
            assert not upsert


def test_completed_saves_the_prompt_on_the_persona_and_counts_tokens():
    completed = next(e for e in every_event() if e.type == "persona.completed")
    ops = {coll: doc for coll, _, doc, _ in _ops(completed)}
    assert ops["personas_v2"]["$set"]["system_prompt"] == "You are Dr. Smith."
    assert ops["personas_v2"]["$set"]["prompt_mode"] == "try_mode"
    assert ops["personas_v2"]["$set"]["prompt_generated_at"] == completed.occurred_at
    assert ops["prompt_job_personas"]["$set"]["usage"] == {"prompt_tokens": 10, "completion_tokens": 5}


def test_work_items_change_no_read_model():
    item = next(e for e in every_event() if e.type == "persona.prompt_requested")
    assert project(item, 1) == []


def _job(statuses, **extra):
    """A job's read model as the projector would have written it, personas at ``statuses``."""
    req = job_requested(pids=tuple(statuses))
    (_, job_op), *persona_ops = project(req, 1)
    job = dict(job_op.update["$setOnInsert"], _id=req.job_id, **extra)
    personas = []
    for (_, op), status in zip(persona_ops, statuses.values(), strict=True):
        doc = dict(op.update["$setOnInsert"], status=status)
        if status == "completed":
            doc.update(prompt_length=10, usage={"prompt_tokens": 3, "completion_tokens": 2})
        personas.append(doc)
    return job, personas


def decide(statuses, now=T0, **extra):
    return decide_job_end(*_job(statuses, **extra), now)


def test_job_completes_when_every_persona_ended_with_at_least_one_success():
    end = decide({"a": "completed", "b": "failed"})
    assert end.type == "job.completed" and end.status == "completed"
    assert end.results.successful == 1 and end.results.failed == 1 and end.results.total_personas == 2
    assert end.results.usage.prompt_tokens == 3


def test_job_fails_when_no_persona_succeeded():
    end = decide({"a": "failed", "b": "failed"})
    assert end.status == "failed" and end.error


def test_running_job_does_not_end_before_its_deadline():
    assert decide({"a": "completed", "b": "processing"}) is None


def test_overdue_job_expires_with_unfinished_personas_failed():
    job, personas = _job({"a": "completed", "b": "processing"})
    end = decide_job_end(job, personas, job["deadline"] + timedelta(seconds=1))
    assert end.type == "job.expired"
    assert end.results.personas["b"].status == "failed" and end.results.personas["b"].error_code == "expired"
    assert end.results.personas["a"].status == "completed"


def test_cancel_ends_unfinished_personas_cancelled():
    end = decide({"a": "completed", "b": "queued"}, cancel_requested_at=T0)
    assert end.type == "job.cancelled"
    assert end.results.personas["b"].status == "cancelled" and end.results.cancelled == 1


def test_finished_job_is_never_ended_twice():
    job, personas = _job({"a": "completed"})
    job["status"] = "completed"
    assert decide_job_end(job, personas, T0) is None


def test_results_follow_the_requested_order():
    assert list(results_from_job(*_job({"z": "completed", "a": "completed", "m": "failed"})).personas) == [
        "z", "a", "m"]


def test_a_persona_update_never_rewrites_the_job_document():
    for event in every_event():
        if event.type in ("persona.progress", "persona.completed", "persona.failed"):
            assert "prompt_jobs" not in [coll for coll, _ in project(event, 9)]


def test_successive_updates_of_one_document_coalesce_and_fold_the_same():
    from services.projector.memory_fold import MemoryFold
    from services.projector.projections import coalesce, writes_for

    req = job_requested(pids=("p1", "p2"))
    updates = map(sample, ("persona.progress", "persona.completed", "persona.failed"))
    events = [req] + [e.model_copy(update={"job_id": req.job_id}) for e in updates]
    ops = [(c, op) for seq, e in enumerate(events, 1) for c, op in writes_for(e, seq, timedelta(days=1))]
    by_coll: dict[str, list] = {}
    for c, op in ops:
        by_coll.setdefault(c, []).append(op)
    merged = {c: coalesce(list(v)) for c, v in by_coll.items()}
    assert len(merged["prompt_job_personas"]) == len(by_coll["prompt_job_personas"]) - 1  # progress + completed
    plain, fused = MemoryFold(), MemoryFold()
    for c, v in by_coll.items():
        for op in v:
            plain.apply(c, op)
    for c, v in merged.items():
        for op in v:
            fused.apply(c, op)
    assert fused.collections == plain.collections
    a = fused.collections["prompt_job_personas"][f"{req.job_id}:p1"]
    assert a["status"] == "completed" and a["attempts"] == 1 and a["_seq"] == 3


def _fold(ops_by_collection: dict[str, list], into=None):
    from services.projector.memory_fold import MemoryFold

    fold = into or MemoryFold()
    for c, ops in ops_by_collection.items():
        for op in ops:
            fold.apply(c, op)
    return fold


def _writes(events: list, first_seq: int = 1, *, merged: bool) -> dict[str, list]:
    from services.projector.projections import coalesce, writes_for

    by_coll: dict[str, list] = {}
    for seq, e in enumerate(events, first_seq):
        for c, op in writes_for(e, seq, timedelta(days=1)):
            by_coll.setdefault(c, []).append(op)
    return {c: coalesce(v) for c, v in by_coll.items()} if merged else by_coll


def test_a_replayed_batch_completes_a_persona_a_crashed_projector_left_processing():
    """The first projector stored the progress but died before the completion and before its
    checkpoint; the next one replays both in one batch, coalesced."""
    req = job_requested(pids=("p1", "p2"))
    progress, completed = (sample(t).model_copy(update={"job_id": req.job_id})
                           for t in ("persona.progress", "persona.completed"))
    everything = _fold(_writes([req, progress, completed], merged=False))

    crashed = _fold(_writes([req, progress], merged=False))  # prefix applied, checkpoint still at 1
    resumed = _fold(_writes([progress, completed], first_seq=2, merged=True), into=crashed)
    assert resumed.collections == everything.collections
    assert resumed.collections["prompt_job_personas"][f"{req.job_id}:p1"]["status"] == "completed"


def test_an_update_that_ends_a_persona_is_not_merged_with_a_later_one():
    from services.projector.projections import coalesce

    req = job_requested(pids=("p1",))
    failed = sample("persona.failed").model_copy(update={"job_id": req.job_id, "persona_id": "p1"})
    completed = sample("persona.completed").model_copy(update={"job_id": req.job_id})
    ops = _writes([req, failed, completed], merged=False)["prompt_job_personas"]
    assert len(coalesce(ops)) == len(ops)  # sequentially, the completion finds the persona closed
    plain = _fold(_writes([req, failed, completed], merged=False))
    fused = _fold(_writes([req, failed, completed], merged=True))
    assert fused.collections == plain.collections
    assert plain.collections["prompt_job_personas"][f"{req.job_id}:p1"]["status"] == "failed"


def test_creations_nothing_earlier_touches_become_inserts_and_fold_the_same():
    from services.projector.memory_fold import MemoryFold
    from services.projector.projections import JOB_PERSONAS, Change, coalesce, split_creations, writes_for

    first, second = job_requested("j1", ("p1", "p2")), job_requested("j2", ("p1",))
    finished = sample("job.completed")
    progress = sample("persona.progress").model_copy(update={"job_id": "j1", "persona_id": "p1"})
    def persona_ops(events, first_seq):
        return [op for seq, e in enumerate(events, first_seq) for c, op in writes_for(e, seq, timedelta(days=1))
                if c == JOB_PERSONAS]

    # an update of every persona document of j1 (an update of many: no projection sends one now)
    many = Change({"job_id": "j1"}, {"$set": {"archived": True}}, many=True)
    ops = persona_ops([first, progress, finished.model_copy(update={"job_id": "j1"})], 1) + [many] \
        + persona_ops([second], 4)
    twice = Change({"_id": "j1:p2"}, {"$setOnInsert": {"job_id": "j1", "_seq": 9}}, upsert=True)
    docs, rest = split_creations(coalesce(ops) + [twice])
    # j1's personas are new; so is j2's, which j1's update of many cannot touch
    assert [d["_id"] for d in docs] == ["j1:p1", "j1:p2", "j2:p1"]
    late = Change({"_id": "j1:p3"}, {"$setOnInsert": {"job_id": "j1", "_seq": 10}}, upsert=True)
    docs, rest = split_creations(coalesce(ops) + [twice, late])
    # a creation stored twice, and one j1's update of many would have found, keep their places
    assert [c.filter.get("_id") for c in rest if c.upsert] == ["j1:p2", "j1:p3"]
    plain, split = MemoryFold(), MemoryFold()
    for op in ops + [twice, late]:
        plain.apply(JOB_PERSONAS, op)
    for doc in docs:
        split.apply(JOB_PERSONAS, Change({"_id": doc["_id"]}, {"$setOnInsert": {k: v for k, v in doc.items()
                                                                               if k != "_id"}}, upsert=True))
    for op in rest:
        split.apply(JOB_PERSONAS, op)
    assert split.collections == plain.collections


def test_a_batch_fold_holds_what_it_creates_and_sends_the_rest_in_order():
    from services.projector.memory_fold import BatchFold
    from services.projector.projections import Change

    def create(_id: str, seq: int) -> Change:
        return Change({"_id": _id}, {"$setOnInsert": {"job_id": "j", "status": "queued", "_seq": seq}}, upsert=True)

    def update(_id: str, seq: int) -> Change:
        return Change({"_id": _id, "_seq": {"$lt": seq}}, {"$set": {"status": "done", "_seq": seq}})

    retention = Change({"job_id": "j"}, {"$set": {"expire_at": 1}}, many=True)
    fold = BatchFold()
    changes = [update("old", 1), create("old", 2), create("new", 3), update("new", 4), retention]
    for seq, change in enumerate(changes, 1):
        fold.apply("c", change, seq)
    # "old" was first met by an update: it lives in MongoDB, so all of its changes go there, in order
    assert [(seq, c.filter["_id"]) for seq, c in fold.residual["c"][:2]] == [(1, "old"), (2, "old")]
    # "new" is held with its update and the retention folded in; the retention goes to the other
    # documents of the job in MongoDB, not to the one held here
    assert fold.collections["c"]["new"] == {"_id": "new", "job_id": "j", "status": "done", "_seq": 4, "expire_at": 1}
    seq, sent = fold.residual["c"][2]
    assert seq == 5 and sent.many and sent.filter == {"job_id": "j", "_id": {"$nin": ["new"]}}
    # were "new" in MongoDB already, its changes here replay on it alone
    assert [(s, c.filter) for s, c in fold.replay("c", ["new"])] == [
        (3, {"_id": "new"}), (4, {"_id": "new", "_seq": {"$lt": 4}}), (5, {"job_id": "j", "_id": "new"})]


@pytest.mark.parametrize("finished_after", [timedelta(minutes=5), timedelta(hours=2)])
def test_a_job_leaves_a_retention_after_its_deadline_or_its_end_and_its_personas_with_it(finished_after):
    """The job document is created to expire a retention after the deadline; the end brings that
    forward only (``$min``). Its persona documents carry no time of their own (they leave with the
    job: ``ReadModels.drop_expired_jobs``), and the end writes none of them."""
    from services.projector.memory_fold import MemoryFold
    from services.projector.projections import JOB_PERSONAS, JOBS, writes_for

    keep = timedelta(days=7)
    request = job_requested("j1", ("p1", "p2"))
    end = sample("job.completed").model_copy(update={"job_id": "j1", "occurred_at": T0 + finished_after})
    assert not [c for c, _ in writes_for(end, 9, keep) if c == JOB_PERSONAS]
    # one rewrite of the job document, which holds the results: the retention moves with the status
    [(collection, change)] = writes_for(end, 9, keep)
    assert collection == JOBS and set(change.update) == {"$set", "$min"}
    fold = MemoryFold()
    for seq, event in ((1, request), (9, end)):
        for collection, change in writes_for(event, seq, keep):
            fold.apply(collection, change)
    personas = fold.collections[JOB_PERSONAS].values()
    assert len(personas) == 2 and not [p for p in personas if "expire_at" in p]
    assert fold.collections[JOBS]["j1"]["expire_at"] == min(end.occurred_at, request.deadline) + keep


def test_every_write_is_by_a_subject_its_documents_writers_name():
    """A re-apply folds again only the events :func:`writers_of` names for the documents the
    parked event wrote: a projection writing a document from any other subject would be missed."""
    from services.projector.projections import writers_of, writes_for
    from services.testing.memory_streams import subject_matches

    for event in every_event():
        for collection, change in writes_for(event, 42, timedelta(days=7)):
            _id = change.filter.get("_id")
            assert isinstance(_id, str) and not change.many, (event.type, collection)
            writers = writers_of(collection, _id)
            assert any(subject_matches(f, event.subject()) for f in writers), (event.type, collection)
