"""Re-applying a parked event folds the log again from it, and the read models end as one fold
of the fixed log makes them, even with live events arriving while it runs."""

from __future__ import annotations

import asyncio
import json
from contextlib import aclosing

from structlog.testing import capture_logs

from contracts.events import UPCASTERS, JobCancelled, JobCancelRequested, PersonaCreated, encode_event
from services.adapters.parked import ParkedEvents
from services.projector.fold import PROJECTOR, Fold
from services.testing import memory_read_models
from tests.readmodels import snapshot
from tests.samples import job_requested, persona, results
from tests.samples import sample as sample_event
from tests.waiting import eventually


async def _at(models, seq: int) -> bool:
    return await models.checkpoint() >= seq


async def test_a_reapply_with_live_events_meanwhile_ends_as_one_fold_of_the_log(memory_log, memory_models,
                                                                                 monkeypatch):
    # A job request of a version this code has no upcaster for yet: parked, so its job's
    # documents are missing when the cancel after it is folded.
    old = json.loads(encode_event(job_requested("j-old", ("p1", "p2"))))
    old["version"] = 0
    parked_seq = await memory_log.publish_to(memory_log.stream, "promptgen.job.j-old.requested",
                                             json.dumps(old).encode())
    for n in range(600):  # the log since, which a re-apply of the job's request need not fold again
        await memory_log.publish(PersonaCreated(persona=persona(f"p{n}")))
    await memory_log.publish(JobCancelRequested(job_id="j-old", correlation_id="j-old"))
    fold = Fold(memory_log, memory_models, parked=ParkedEvents(memory_log))
    stop = asyncio.Event()
    live = asyncio.create_task(fold.run(stop))
    gate, first_read, live_has_it = asyncio.Event(), asyncio.Event(), asyncio.Event()
    reapplying: asyncio.Task | None = None
    try:
        end = await memory_log.last_seq()
        await eventually(lambda: _at(memory_models, end), what="the live fold reaching the end")
        (record,) = await fold.parked.list(PROJECTOR)
        assert record.seq == parked_seq

        # The re-apply is held once it has begun reading what it folds again; the live fold's
        # reads are watched.
        read, follow_batches = memory_log.read, memory_log.follow_batches

        async def held(filter_subject: str, start_seq: int = 1):
            first_read.set()
            await gate.wait()
            async with aclosing(read(filter_subject, start_seq)) as events:
                async for stored in events:
                    yield stored

        async def watched(*args, **kwargs):
            async with aclosing(follow_batches(*args, **kwargs)) as batches:
                async for batch in batches:
                    if batch[-1].seq > end:
                        live_has_it.set()
                    yield batch

        monkeypatch.setattr(memory_log, "read", held)
        monkeypatch.setattr(memory_log, "follow_batches", watched)
        live.cancel()  # the live fold again, reading through the watch
        await asyncio.wait([live])
        live = asyncio.create_task(fold.run(stop))
        monkeypatch.setitem(UPCASTERS, ("job.requested", 0), lambda obj: obj)  # the fix
        with capture_logs() as logs:
            reapplying = asyncio.create_task(fold.reapply(record))
            await asyncio.wait_for(first_read.wait(), 10)
            # While the re-apply runs, the job's end comes, and the live fold reads it.
            ended = await memory_log.publish(JobCancelled(job_id="j-old", results=results({"p1": "cancelled",
                                                                                            "p2": "cancelled"})))
            await asyncio.wait_for(live_has_it.wait(), 10)
            gate.set()
            await asyncio.wait_for(reapplying, 10)
        # Only the job's own events up to where the fold was are folded again (its request and
        # cancel), not the 600 others after it, nor the end the live fold writes.
        (refolded,) = [e for e in logs if e["event"] == "reapply_refolded"]
        assert refolded["events"] == 2 and refolded["subjects"] == ["promptgen.job.j-old.>"]
        await eventually(lambda: _at(memory_models, ended), what="the live fold storing the job's end")
    finally:
        gate.set()
        stop.set()
        if reapplying is not None:
            await asyncio.wait([reapplying], timeout=10)
        live.cancel()
        await asyncio.wait([live], timeout=10)

    once = memory_read_models()  # one fold of the whole log, as it reads now
    clean = Fold(memory_log, once, parked=ParkedEvents(memory_log))
    async with aclosing(memory_log.read_batches(">", 1)) as batches:
        async for batch in batches:
            await clean.apply(batch)
    job = await memory_models.jobs.find_one({"_id": "j-old"})
    assert job is not None and job.get("cancel_requested_at") is not None and job["status"] == "cancelled"
    assert await snapshot(memory_models) == await snapshot(once)


async def test_a_parked_update_whose_document_later_events_changed_is_refused_and_a_rebuild_applies_it(
        memory_log, memory_models, monkeypatch):
    import pytest

    await memory_log.publish(job_requested("j2", ("p1",)))
    old = json.loads(encode_event(JobCancelRequested(job_id="j2", correlation_id="j2")))
    old["version"] = 0  # no upcaster yet: parked
    parked_seq = await memory_log.publish_to(memory_log.stream, "promptgen.job.j2.cancel_requested",
                                             json.dumps(old).encode())
    end = await memory_log.publish(JobCancelled(job_id="j2", results=results({"p1": "cancelled"})))
    fold = Fold(memory_log, memory_models, parked=ParkedEvents(memory_log))
    async with aclosing(memory_log.read_batches(">", 1)) as batches:
        async for batch in batches:
            await fold.apply(batch)
    (record,) = await fold.parked.list(PROJECTOR)
    assert record.seq == parked_seq and (await memory_models.jobs.find_one({"_id": "j2"}))["_seq"] == end

    monkeypatch.setitem(UPCASTERS, ("job.cancel_requested", 0), lambda obj: obj)  # the fix
    with pytest.raises(Exception, match="later events changed .* `promptgen rebuild`"):
        await fold.reapply(record)  # its update would be passed over: not said to be applied
    assert (await memory_models.jobs.find_one({"_id": "j2"})).get("cancel_requested_at") is None

    async def no_bar(done: int, total: int, *, stage: str = "writing") -> None:
        return None

    await fold.rebuild(no_bar)
    assert (await memory_models.jobs.find_one({"_id": "j2"})).get("cancel_requested_at") is not None


async def test_a_reapplied_persona_creation_takes_the_prompts_stored_for_it_since(memory_log, memory_models,
                                                                               monkeypatch):
    """The persona's writers are found by a wildcard over every job: its prompt, stored while
    its creation was parked, reaches it."""
    old = json.loads(encode_event(PersonaCreated(persona=persona("p-old"))))
    old["version"] = 0
    parked_seq = await memory_log.publish_to(memory_log.stream, "promptgen.persona.p-old.created",
                                             json.dumps(old).encode())
    await memory_log.publish(job_requested("j3", ("p-old",)))
    await memory_log.publish(PersonaCreated(persona=persona("p-other")))
    await memory_log.publish(sample_event("persona.completed").model_copy(
        update={"job_id": "j3", "persona_id": "p-old", "prompt": "You are the old one."}))
    fold = Fold(memory_log, memory_models, parked=ParkedEvents(memory_log))
    async with aclosing(memory_log.read_batches(">", 1)) as batches:
        async for batch in batches:
            await fold.apply(batch)
    (record,) = await fold.parked.list(PROJECTOR)
    assert record.seq == parked_seq and await memory_models.personas.find_one({"_id": "p-old"}) is None

    monkeypatch.setitem(UPCASTERS, ("persona.created", 0), lambda obj: obj)
    with capture_logs() as logs:
        await fold.reapply(record)
    doc = await memory_models.personas.find_one({"_id": "p-old"})
    assert doc is not None and doc["system_prompt"] == "You are the old one."
    (refolded,) = [e for e in logs if e["event"] == "reapply_refolded"]
    assert refolded["events"] == 2  # the creation and the prompt: not the job's request, not the other persona
    assert "promptgen.job.*.persona.p-old.completed" in refolded["subjects"]
