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
