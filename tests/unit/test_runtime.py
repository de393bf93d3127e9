"""Running a service: stopping a task for sure."""

from __future__ import annotations

import asyncio

from services.runtime.lifecycle import cancel_and_wait


async def test_cancel_and_wait_cancels_again_a_task_that_swallowed_the_first_cancel():
    swallowed = []

    async def stubborn() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            swallowed.append(True)  # as a cancel lost in asyncio.wait_for on Python 3.11
        await asyncio.sleep(60)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    assert await cancel_and_wait(task, every=0.05)
    assert swallowed == [True] and task.cancelled()


def test_a_service_process_settles_its_heap_when_it_says_it_is_ready(monkeypatch, capsys):
    """Its process entry asks for it; a test running services in its own process does not."""
    import gc

    from services.runtime import lifecycle

    before = gc.get_freeze_count()
    lifecycle.announce_ready(service="in-process")
    assert gc.get_freeze_count() == before
    monkeypatch.setattr(lifecycle, "_settle_when_ready", False)  # restored after the test
    lifecycle.settle_heap_when_ready()
    try:
        lifecycle.announce_ready(service="own process")
        assert gc.get_freeze_count() > before  # start-up's objects are out of the collector's sight
    finally:
        gc.unfreeze()
    assert capsys.readouterr().out.count('"service_ready"') == 2


def test_the_ready_line_has_every_field_a_log_line_has(capsys):
    """The supervisor waits for it, and a log pipeline reads it as any other line."""
    import json

    from services.runtime import lifecycle

    lifecycle.announce_ready(port=9000)
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"event", "level", "logger", "timestamp"} <= line.keys() and line["event"] == "service_ready"
