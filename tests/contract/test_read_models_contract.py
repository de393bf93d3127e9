"""What the services rely on of the read models, asserted of ReadModels on a MongoDB-wire
server and on mongomock alike; and one test that folds every sample event into both and
compares the documents."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pymongo import ASCENDING

from services.adapters.read_models import CHECKPOINT_ID, IDS_PER_QUERY, STATE, Mark, ReadModels
from services.projector.job_manager import JOB_MANAGER
from services.projector.projections import coalesce, split_creations, writes_for
from services.projector.rebuild import switch_to
from services.projector.scratch import Scratch
from tests.readmodels import snapshot
from tests.samples import T0, every_event, job_requested

RETENTION = timedelta(days=7)


async def fold(models: ReadModels, events: list, first_seq: int = 1) -> None:
    """The projector's writes for ``events`` at sequences from ``first_seq``, one batch per
    collection, coalesced, new documents inserted first, as the fold applies them."""
    writes: dict[str, list] = {}
    for seq, event in enumerate(events, first_seq):
        for collection, change in writes_for(event, seq, RETENTION):
            writes.setdefault(collection, []).append(change)
    for collection, changes in writes.items():
        docs, updates = split_creations(coalesce(changes))
        if docs:
            await models.insert_new(collection, docs)
        if updates:
            await models.apply(collection, updates)


async def replay_one_by_one(models: ReadModels, events: list, first_seq: int = 1) -> None:
    for seq, event in enumerate(events, first_seq):
        for collection, change in writes_for(event, seq, RETENTION):
            await models.apply(collection, [change])


async def test_mongodb_and_mongomock_fold_every_sample_event_alike(models, mongomock_models):
    # The sample job's deadline may be long past: its documents would be past their retention.
    # A deadline ahead keeps them within it, as a live job's are.
    ahead = datetime.now(UTC) + timedelta(minutes=30)
    events = [e.model_copy(update={"deadline": ahead}) if e.type == "job.requested" else e for e in every_event()]
    for target in (models, mongomock_models):
        await target.ensure_indexes()
        await fold(target, events)
    real, fake = await snapshot(models), await snapshot(mongomock_models)
    assert fake == real
    assert real["prompt_jobs"] and real["personas_v2"] and real["prompt_job_personas"]


async def test_a_replayed_event_changes_nothing(any_models):
    events = every_event()
    await fold(any_models, events)
    before = await snapshot(any_models)
    await replay_one_by_one(any_models, events)  # a crash before the checkpoint: all of it again
    await fold(any_models, events[:4])  # creations again
    assert await snapshot(any_models) == before


async def test_inserting_documents_already_there_leaves_them_and_names_them(any_models):
    await any_models.insert_new("templates", [{"_id": "a", "v": 1}])
    present = await any_models.insert_new("templates", [{"_id": "b", "v": 2}, {"_id": "a", "v": 3}, {"_id": "c"}])
    assert present == ["a"]
    assert [d async for d in any_models.templates.find({}).sort("_id", 1)] == [
        {"_id": "a", "v": 1}, {"_id": "b", "v": 2}, {"_id": "c"}]


async def test_updates_apply_only_to_older_documents(any_models):
    by_type = {e.type: e for e in every_event()}
    await fold(any_models, [by_type["job.requested"]], first_seq=10)
    await fold(any_models, [by_type["persona.failed"]], first_seq=12)
    await fold(any_models, [by_type["persona.progress"]], first_seq=11)  # older: ignored
    doc = await any_models.job_personas.find_one({"_id": "j1:p2"})
    assert (doc["status"], doc["_seq"], doc["error_code"]) == ("failed", 12, "llm_timeout")
    stored_at = by_type["persona.failed"].occurred_at
    assert doc["updated_at"] == stored_at.replace(microsecond=stored_at.microsecond // 1000 * 1000)  # BSON: ms


async def test_checkpoint_and_positions_only_move_forward(any_models):
    assert await any_models.checkpoint() == 0
    assert await any_models.position(JOB_MANAGER) == 0
    await any_models.save_checkpoint(7)
    await any_models.save_checkpoint(5)  # a late writer cannot move it back
    await any_models.save_position(JOB_MANAGER, 3)
    await any_models.save_position("other", 9)
    assert await any_models.checkpoint() == 7
    assert (await any_models.position(JOB_MANAGER), await any_models.position("other")) == (3, 9)


async def test_positions_keep_the_log_they_were_taken_in_and_restart_in_another(any_models):
    assert await any_models.checkpoint_mark() == Mark(0, None)
    await any_models.save_checkpoint(7, "PROMPTGEN@a")
    await any_models.save_position(JOB_MANAGER, 4, "PROMPTGEN@a")
    await any_models.save_position(JOB_MANAGER, 3)  # behind, and naming no log: neither changes
    assert await any_models.checkpoint_mark() == Mark(7, "PROMPTGEN@a")
    assert await any_models.positions() == {JOB_MANAGER: Mark(4, "PROMPTGEN@a")}
    await any_models.reset_position(JOB_MANAGER, "PROMPTGEN@b")  # the one write that moves it back
    assert await any_models.position_mark(JOB_MANAGER) == Mark(0, "PROMPTGEN@b")
    await any_models.save_position(JOB_MANAGER, 2, "PROMPTGEN@b")
    assert await any_models.positions() == {JOB_MANAGER: Mark(2, "PROMPTGEN@b")}


async def test_the_gateway_queries(any_models):
    await any_models.ensure_indexes()
    jobs = []
    ahead = datetime.now(UTC)  # deadlines ahead: documents within their retention
    for i, job_id in enumerate(("ja", "jb", "jc")):
        request = job_requested(job_id, ("p1", "p2", "p3")).model_copy(
            update={"occurred_at": T0 + timedelta(minutes=i), "deadline": ahead + timedelta(minutes=30 + i)})
        jobs.append(request)
    await fold(any_models, jobs)
    by_type = {e.type: e for e in every_event()}
    failed = by_type["persona.failed"].model_copy(update={"job_id": "jb", "persona_id": "p2"})
    await fold(any_models, [failed], first_seq=10)

    # the jobs list: newest first, a projection with a dotted field, counts by an aggregation
    fields = ["status", "template_id", "template_data.title", "total_personas", "created_at"]
    docs = [d async for d in any_models.jobs.find({}, fields).sort("created_at", -1).limit(2)]
    assert [d["_id"] for d in docs] == ["jc", "jb"]
    assert docs[0]["template_data"] == {"title": "Renewal negotiation"} and "deadline" not in docs[0]
    assert docs[0]["created_at"].tzinfo is not None  # tz-aware, as the real client is configured
    pipeline = [{"$match": {"job_id": {"$in": ["jb", "jc"]}}},
                {"$group": {"_id": {"job": "$job_id", "status": "$status"}, "n": {"$sum": 1}}}]
    counts = {(r["_id"]["job"], r["_id"]["status"]): r["n"]
              async for r in await any_models.job_personas.aggregate(pipeline)}
    assert counts == {("jb", "queued"): 2, ("jb", "failed"): 1, ("jc", "queued"): 3}

    # one job's personas in job order; personas by ids; overdue jobs by a tz-aware deadline
    assert [p["persona_id"] for p in await any_models.job_persona_docs("jb")] == ["p1", "p2", "p3"]
    overdue = any_models.jobs.find({"status": "processing", "deadline": {"$lte": ahead + timedelta(minutes=31)}},
                                   {"_id": 1})
    assert sorted([d["_id"] async for d in overdue]) == ["ja", "jb"]
    assert await any_models.jobs.find_one({"_id": "nope"}) is None
    assert await any_models.jobs.find_one({"_id": "ja"}, {"status": 1}) == {"_id": "ja", "status": "processing"}


async def test_personas_by_ids_and_by_template(any_models):
    created = [e for e in every_event() if e.type == "persona.created"][0]
    other = created.model_copy(update={"persona": created.persona.model_copy(update={"id": "p2"})})
    await fold(any_models, [created, other])
    found = {d["_id"] async for d in any_models.personas.find({"_id": {"$in": ["p1", "p2", "p9"]}})}
    assert found == {"p1", "p2"}
    by_template = [d["_id"] async for d in any_models.personas.find({"template_id": "t1"}).sort("created_at", 1)]
    assert sorted(by_template) == ["p1", "p2"]


async def test_a_rebuild_switches_by_merging_into_the_live_collections(any_models):
    await any_models.templates.insert_many([{"_id": "old"}])
    await any_models.jobs.insert_many([{"_id": "stale"}])  # no rebuilt jobs: the live ones go
    async with Scratch() as rebuilt:
        await rebuilt.put("templates", [{"_id": "t2", "n": 2}, {"_id": "t1", "n": 1}])
        await rebuilt.put(STATE, [{"_id": CHECKPOINT_ID, "seq": 42}])
        await switch_to(rebuilt, any_models)
    assert [d async for d in any_models.templates.find({}).sort("_id", ASCENDING)] == [
        {"_id": "t1", "n": 1}, {"_id": "t2", "n": 2}]
    assert await any_models.jobs.count_documents({}) == 0
    assert await any_models.checkpoint() == 42


async def test_writing_differences_stores_what_the_server_takes_and_names_what_it_refuses(models):
    """An unordered write goes on past a refused document; the caller learns which, to report
    the event that made it. An insert that finds its document there replaces it."""
    import pytest

    from services.adapters.read_models import DocumentsRefused

    await models.templates.create_index("name", unique=True)  # a server-side refusal to provoke
    await models.templates.insert_many([{"_id": "a", "name": "A"}, {"_id": "b", "name": "B"}])
    with pytest.raises(DocumentsRefused) as refused:
        await models.write_differences(
            "templates",
            insert=[{"_id": "a", "name": "A2"}, {"_id": "c", "name": "B"}, {"_id": "d", "name": "D"}],
            replace=[{"_id": "b", "name": "A"}, {"_id": "e", "name": "E"}], delete=[])
    assert {doc["_id"] for doc, _ in refused.value.refused} == {"b", "c"}  # names already taken
    assert [d async for d in models.templates.find({}).sort("_id", 1)] == [
        {"_id": "a", "name": "A2"}, {"_id": "b", "name": "B"}, {"_id": "d", "name": "D"}, {"_id": "e", "name": "E"}]


async def test_deleting_documents(any_models):
    await any_models.job_personas.insert_many([{"_id": f"j:{i}", "job_id": "j"} for i in range(3)])
    await any_models.job_personas.delete_many({"job_id": "j"})
    assert await any_models.job_personas.count_documents({}) == 0
    now = datetime.now(UTC)
    await any_models.state.update_one({"_id": "x"}, {"$max": {"seq": 1}, "$set": {"at": now}}, upsert=True)
    assert (await any_models.state.find_one({"_id": "x"}))["seq"] == 1


async def test_ensuring_indexes_drops_the_status_index_earlier_versions_made_and_is_repeatable(any_models):
    await any_models.job_personas.create_index([("job_id", 1), ("status", 1)])  # as earlier versions did
    await any_models.ensure_indexes()
    await any_models.ensure_indexes()  # a restart: nothing left to drop
    names = {ix["name"] async for ix in await any_models.job_personas.list_indexes()}
    assert "job_id_1_status_1" not in names and "job_id_1_order_1" in names


async def test_ensuring_indexes_replaces_the_ttl_indexes_earlier_versions_made(any_models):
    """Retention is the projector's sweep: the job documents' time is a plain index, and the job
    persona documents (each updated twice per persona) have no index on it at all."""
    await any_models.jobs.create_index([("expire_at", ASCENDING)], expireAfterSeconds=0)  # as earlier versions did
    await any_models.job_personas.create_index([("expire_at", ASCENDING)], expireAfterSeconds=0)
    await any_models.ensure_indexes()
    await any_models.ensure_indexes()  # a restart: nothing left to replace
    jobs = {ix["name"]: ix async for ix in await any_models.jobs.list_indexes()}
    assert "expire_at_1" in jobs and "expireAfterSeconds" not in jobs["expire_at_1"]
    assert not [ix async for ix in await any_models.job_personas.list_indexes() if "expire_at" in ix["key"]]


async def test_dropping_the_old_ttl_index_first_drops_persona_documents_whose_job_already_left(any_models):
    """Under it a job's persona documents outlived its document by up to its deadline: nothing
    would find those once it is gone (the sweep finds persona documents through their job)."""
    soon = datetime.now(UTC) + timedelta(minutes=20)
    await any_models.job_personas.create_index([("expire_at", ASCENDING)], expireAfterSeconds=0)
    await any_models.jobs.insert_one({"_id": "kept", "expire_at": soon - timedelta(minutes=10)})
    for job_id in ("kept", "gone"):
        await any_models.job_personas.insert_many([{"_id": f"{job_id}:p{i}", "job_id": job_id, "order": i,
                                                    "expire_at": soon} for i in range(2)])
    await any_models.ensure_indexes()
    assert sorted([d["_id"] async for d in any_models.job_personas.find({})]) == ["kept:p0", "kept:p1"]
    assert not [ix async for ix in await any_models.job_personas.list_indexes() if "expire_at" in ix["key"]]


async def test_expired_job_views_are_dropped_with_their_personas_and_no_other(any_models):
    now = datetime(2026, 11, 27, 12, tzinfo=UTC)
    for n, expire_at in enumerate([now - timedelta(days=1), now, now + timedelta(seconds=1), None]):
        job = {"_id": f"j{n}", "status": "completed"} | ({"expire_at": expire_at} if expire_at else {})
        await any_models.jobs.insert_one(job)
        await any_models.job_personas.insert_many([{"_id": f"j{n}:p{i}", "job_id": f"j{n}", "order": i}
                                                   for i in range(3)])
    await any_models.ensure_indexes()

    assert await any_models.drop_expired_jobs(now, limit=1) == 1  # a round of at most ``limit`` jobs
    assert await any_models.drop_expired_jobs(now) == 1
    assert await any_models.drop_expired_jobs(now) == 0
    assert sorted([d["_id"] async for d in any_models.jobs.find({})]) == ["j2", "j3"]
    assert sorted({d["job_id"] async for d in any_models.job_personas.find({})}) == ["j2", "j3"]
    assert await any_models.job_personas.count_documents({}) == 6


async def test_personas_are_fetched_by_id_in_queries_of_bounded_size(any_models, monkeypatch):
    # One query naming thousands of ids costs a server that checks each document against the
    # list quadratic time (SecantusDB); the adapter asks at most IDS_PER_QUERY ids at a time.
    docs = [{"_id": f"p{i:04d}", "name": f"P{i}", "tenant": None} for i in range(2 * IDS_PER_QUERY + 50)]
    await any_models.personas.insert_many(docs)
    sizes: list[int] = []
    personas = ReadModels.personas

    class Recorded:
        def __init__(self, collection) -> None:
            self.collection = collection

        def find(self, query, *args):
            sizes.append(len(query["_id"]["$in"]))
            return self.collection.find(query, *args)

    monkeypatch.setattr(ReadModels, "personas", property(lambda self: Recorded(personas.fget(self))))
    asked = [d["_id"] for d in reversed(docs)] + ["p0001", "unknown"]
    found = await any_models.personas_by_id(asked, ["name"])
    assert found == {d["_id"]: {"_id": d["_id"], "name": d["name"]} for d in docs}
    assert max(sizes) <= IDS_PER_QUERY and sum(sizes) == len(docs) + 1  # each id asked once


async def test_persona_counts_are_asked_for_in_aggregates_of_bounded_size(any_models, monkeypatch):
    # The jobs list counts each listed job's personas by status: as for personas by id, one
    # aggregate naming every job costs SecantusDB each document times the whole list.
    job_ids = [f"j{i:03d}" for i in range(IDS_PER_QUERY + 7)]
    statuses = ("completed", "failed", "completed")
    await any_models.job_personas.insert_many([
        {"_id": f"{j}:p{k}", "job_id": j, "status": statuses[(n + k) % 3]}
        for n, j in enumerate(job_ids) for k in range(3)])
    sizes: list[int] = []
    job_personas = ReadModels.job_personas

    class Recorded:
        def __init__(self, collection) -> None:
            self.collection = collection

        async def aggregate(self, pipeline):
            sizes.append(len(pipeline[0]["$match"]["job_id"]["$in"]))
            return await self.collection.aggregate(pipeline)

    monkeypatch.setattr(ReadModels, "job_personas", property(lambda self: Recorded(job_personas.fget(self))))
    counts = await any_models.persona_counts([*reversed(job_ids), "j000", "unknown"])
    assert counts[("j000", "completed")] == 2 and counts[("j000", "failed")] == 1
    assert sum(counts.values()) == 3 * len(job_ids)
    assert max(sizes) <= IDS_PER_QUERY and sum(sizes) == len(job_ids) + 1  # each job asked once

