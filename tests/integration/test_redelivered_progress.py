"""A redelivered work item's progress is stored and shown, not dropped as a duplicate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from contracts.events import PersonaProgress
from services.gateway.projection import ProjectionWaiter
from tests.samples import job_requested


async def test_each_attempts_progress_is_stored_and_the_view_shows_the_last(system, client, event_log, models):
    await system.stop_service("generator")  # nobody works on the item: only our progress events
    job = job_requested("jr", ("a",)).model_copy(update={"deadline": datetime.now(UTC) + timedelta(hours=1)})
    await event_log.publish(job)
    # The same worker output twice, as a redelivery after ack_wait gives it, well inside the
    # duplicate window: JetStream must see two facts, not one published twice.
    first = await event_log.publish(PersonaProgress(job_id="jr", persona_id="a", attempt=1))
    second = await event_log.publish(PersonaProgress(job_id="jr", persona_id="a", attempt=2))
    assert second > first
    assert await ProjectionWaiter(models, 20).wait_for(second)
    view = (await client.get("/scenario/v2/job-status/jr")).json()
    assert view["personas"]["a"]["status"] == "processing"
    assert view["personas"]["a"]["attempts"] == 2
