"""Re-applying a parked event folds the log again from it, a batch at a time: the live fold
goes on in between, and the read models end as one fold of the fixed log would make them."""

from __future__ import annotations

import asyncio
import json
from contextlib import aclosing

from contracts import subjects
from contracts.events import UPCASTERS, PersonaCreated, encode_event
from services.adapters.parked import ParkedEvents
from services.projector.fold import PROJECTOR, Fold
from tests.samples import persona
from tests.samples import sample as sample_event
from tests.waiting import eventually


def _rename_full_name(obj: dict) -> dict:
    p = dict(obj["persona"])
    p["name"] = p.pop("full_name")
    return {**obj, "persona": p}


async def test_the_live_fold_goes_on_while_an_old_parked_event_is_applied_again(memory_log, memory_models,
                                                                                monkeypatch):
    # Version 0 of persona.created called the name "full_name": parked until an upcaster comes.
    old = json.loads(encode_event(PersonaCreated(persona=persona("p-old"))))
    old["version"] = 0
    old["persona"]["full_name"] = old["persona"].pop("name")
    parked_seq = await memory_log.publish_to(memory_log.stream, subjects.persona_created("p-old"),
                                             json.dumps(old).encode())
    for n in range(1200):  # the log since: more than one batch to fold again
        await memory_log.publish(PersonaCreated(persona=persona(f"p{n}")))
    await memory_log.publish(sample_event("persona.completed").model_copy(update={"persona_id": "p-old"}))
    fold = Fold(memory_log, memory_models, parked=ParkedEvents(memory_log))
    stop = asyncio.Event()
    live = asyncio.create_task(fold.run(stop))
    reapplying: asyncio.Task | None = None
    gate = asyncio.Event()
    try:
        end = await memory_log.last_seq()
        await eventually(lambda: _at(memory_models, end), what="the live fold reaching the end")
        (record,) = await fold.parked.list(PROJECTOR)
        assert record.seq == parked_seq and await memory_models.personas.find_one({"_id": "p-old"}) is None

        # The re-apply reads the log in batches; it is held after its first one.
        first_done = asyncio.Event()
        read_batches = memory_log.read_batches

        async def held(filter_subject: str, start_seq: int = 1, max_batch: int = 1000):
            async with aclosing(read_batches(filter_subject, start_seq, max_batch=500)) as batches:
                async for n, batch in _numbered(batches):
                    if n == 1:
                        first_done.set()
                        await gate.wait()
                    yield batch

        monkeypatch.setattr(memory_log, "read_batches", held)
        monkeypatch.setitem(UPCASTERS, ("persona.created", 0), _rename_full_name)
        reapplying = asyncio.create_task(fold.reapply(record))
        await asyncio.wait_for(first_done.wait(), 10)
        # Meanwhile a new persona: the live fold stores it while the re-apply is under way.
        await memory_log.publish(PersonaCreated(persona=persona("p-new")))
        await eventually(lambda: memory_models.personas.find_one({"_id": "p-new"}), timeout=5,
                         what="the live fold storing a new event during a re-apply")
        assert not reapplying.done()
        gate.set()
        await asyncio.wait_for(reapplying, 10)
        doc = await memory_models.personas.find_one({"_id": "p-old"})
        assert doc is not None and doc["name"] == "Dr. Smith"
        assert doc["system_prompt"]  # the completion after it, which had found nothing, now applied
    finally:
        gate.set()
        stop.set()
        if reapplying is not None:
            await asyncio.wait([reapplying], timeout=10)
        live.cancel()  # it waits for the next event
        await asyncio.wait([live], timeout=10)


async def _at(models, seq: int) -> bool:
    return await models.checkpoint() >= seq


async def _numbered(batches):
    n = 0
    async for batch in batches:
        yield n, batch
        n += 1
