"""A long-running gateway does not grow: consumers and tasks return to their baseline."""

from __future__ import annotations

import asyncio
import time

from tests.flows import create_personas, create_template
from tests.sse_client import read_sse

JOBS = 200


async def _eventually(predicate, timeout: float = 20.0) -> bool:
    """Wait for background clean-up to finish (bounded), checking often."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return await predicate()


async def test_hundreds_of_jobs_and_sse_clients_leave_nothing_behind(client, event_log, scenario_document):
    template_id = await create_template(client, scenario_document)
    persona = (await create_personas(client, template_id, 1))[0]["id"]

    async def consumers() -> int:
        return (await event_log.js.stream_info(event_log.stream)).state.consumer_count

    gate = asyncio.Semaphore(20)

    started: list[str] = []

    async def one(i: int) -> None:
        async with gate:
            r = await client.post("/scenario/v2/generate-final-prompts", json={
                "template_id": template_id, "persona_ids": [persona], "mode_mapping": {persona: "try_mode"}})
            sse = r.json()["sse_endpoint"]
            started.append(r.json()["job_id"])
            # every third client walks away after the first message, as closed tabs do
            stream = await read_sse(client, sse, stop_after=1 if i % 3 == 0 else None)
            assert stream.messages

    await one(1)  # warm-up: lazily started, process-wide tasks (SSE shutdown watcher) now exist
    started.clear()
    base_consumers = await consumers()
    base_tasks = len(asyncio.all_tasks())
    before = {id(t) for t in asyncio.all_tasks()}
    await asyncio.gather(*(one(i) for i in range(JOBS)))

    async def listed() -> list[dict]:
        return (await client.get("/scenario/v2/jobs", params={"limit": JOBS})).json()["jobs"]

    jobs = await listed()
    assert {j["job_id"] for j in jobs} == set(started)  # the newest JOBS are exactly these (the warm-up is older)

    # a client that walked away after the first message did not wait for its job's end; the job ends anyway
    async def all_completed() -> bool:
        return all(j["status"] == "completed" for j in await listed())

    assert await _eventually(all_completed), sorted({j["status"] for j in await listed()})

    async def settled() -> bool:
        # a few tasks of the services themselves come and go (a fold in progress, a pending read);
        # a leak would grow with the 200 jobs and the 67 clients that walked away
        return await consumers() == base_consumers and len(asyncio.all_tasks()) <= base_tasks + 3

    ok = await _eventually(settled)
    extra = [t for t in asyncio.all_tasks() if id(t) not in before]
    assert ok, (
        f"{[t.get_coro() for t in extra]}"
        f"consumers {await consumers()} (baseline {base_consumers}), "
        f"tasks {len(asyncio.all_tasks())} (baseline {base_tasks})"
    )
