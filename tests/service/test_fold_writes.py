"""The live fold's writes: new documents inserted in one write, updates after them, each
counted; a batch replayed after a crash (before its checkpoint) changes nothing."""

from __future__ import annotations

from services.projector.fold import Fold
from services.runtime.metrics import Metrics
from services.testing import MemoryEventLog, memory_read_models
from tests.metrics_text import sample
from tests.readmodels import snapshot
from tests.samples import job_requested
from tests.samples import sample as sample_event


def _writes(metrics: Metrics, operation: str) -> float | None:
    return sample(metrics.exposition(), "promptgen_projector_writes_total", operation=operation)


async def test_a_batch_inserts_its_new_documents_and_a_replay_of_it_changes_nothing():
    event_log, metrics, models = MemoryEventLog(), Metrics(), memory_read_models()
    fold = Fold(event_log, models, metrics=metrics)
    req = job_requested("j1", ("p1", "p2"))
    progress, completed = (sample_event(t).model_copy(update={"job_id": "j1", "persona_id": "p1"})
                           for t in ("persona.progress", "persona.completed"))
    for event in (req, progress, completed):
        await event_log.publish(event)
    batch = [stored async for stored in event_log.read(">", 1)]
    await fold.apply(batch)
    once = await snapshot(models)
    assert {d["_id"]: d["status"] for d in once["prompt_job_personas"]} == {"j1:p1": "completed", "j1:p2": "queued"}
    # the job and its two personas inserted; p1's progress and completion one update; its prompt on
    # personas_v2 one update (of a persona this log never created: it finds nothing)
    assert (_writes(metrics, "insert"), _writes(metrics, "update"), _writes(metrics, "update_many")) == (3, 2, 0)

    await fold.apply(batch)  # the projector died before its checkpoint: the next one applies it again
    assert await snapshot(models) == once
    assert await models.checkpoint() == batch[-1].seq
