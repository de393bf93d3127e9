"""The fold's lag gauges: events behind the head of the log, and back to zero once folded."""

from __future__ import annotations

from services.projector.fold import Fold
from services.runtime.metrics import Metrics
from services.testing import MemoryEventLog, memory_read_models
from tests.metrics_text import sample
from tests.samples import job_requested


async def test_lag_counts_the_events_not_yet_folded_then_returns_to_zero():
    event_log, metrics = MemoryEventLog(), Metrics()
    fold = Fold(event_log, memory_read_models(), metrics=metrics)
    for n in range(3):
        await event_log.publish(job_requested(f"j{n}"))
    assert await fold.measure_lag() == 3
    assert sample(metrics.exposition(), "promptgen_projector_lag_events") == 3
    assert sample(metrics.exposition(), "promptgen_projector_lag_seconds") == 0  # nothing folded yet: no age
    batch = [stored async for stored in event_log.read(">", 1)][:2]
    await fold.apply(batch)
    assert sample(metrics.exposition(), "promptgen_projector_lag_events") == 1
    assert sample(metrics.exposition(), "promptgen_projector_lag_seconds") > 0
    await fold.apply([stored async for stored in event_log.read(">", 3)])
    assert sample(metrics.exposition(), "promptgen_projector_lag_events") == 0
    assert sample(metrics.exposition(), "promptgen_projector_lag_seconds") == 0
