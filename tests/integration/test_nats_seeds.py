"""A seed list whose first server is down still connects, to the next one."""

from __future__ import annotations

from services.adapters.event_log import EventLog
from services.cli.embedded import free_port


async def test_event_log_connects_through_a_list_of_seeds_skipping_a_dead_one(settings):
    dead = f"nats://127.0.0.1:{free_port()}"
    seeds = settings.model_copy(update={"nats_url": f"{dead},{settings.nats_url}"})
    event_log = await EventLog.connect(seeds, "test-seeds")
    try:
        assert event_log.nc.is_connected
        assert (await event_log.js.stream_info(seeds.stream)).config.name == seeds.stream
    finally:
        await event_log.close()
