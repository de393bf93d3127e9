"""How soon a dead generator's work is taken up: a generator killed (SIGKILL) in the middle
of its LLM calls, and the time until each item it held is delivered again to a generator.

A generator under `promptgen up` holds every persona of a job in LLM calls that last
several seconds, and is killed while all of them are under way; `up` starts a new one at
once (ready in a few seconds, before the ack wait runs out). From the log: each persona
whose call was cut has a second `persona.progress` (attempt 2), stored when the new
generator took the item up; its time after the kill is the recovery time. The same run
measures the default ack wait and, for reference, the 30 s it used to be.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import UTC, datetime

from bench import harness

SCENARIO = """# Renewal negotiation
A rep renews a contract with a skeptical buyer.

## Roles
- Sales rep: the learner
- Buyer - procurement lead, two outages last quarter
"""


def generator_recovery(quick: bool) -> dict:
    from bench.scenarios import MockLLMProcess, _llm_env
    from services.runtime.settings import Settings

    personas, latency_ms = (4, 1500) if quick else (20, 5000)
    default = Settings().ack_wait_seconds
    runs = {}
    for ack_wait in (default,) if quick else (default, 30.0):
        llm = MockLLMProcess(latency_ms=latency_ms)
        d = harness.start(env=_llm_env(llm, PROMPTGEN_ACK_WAIT_SECONDS=str(ack_wait),
                                       PROMPTGEN_WORKER_CONCURRENCY=str(personas), PROMPTGEN_LLM_MAX_ATTEMPTS="1"))
        try:
            runs[ack_wait] = asyncio.run(_kill_one_generator(d, llm, personas))
        finally:
            d.stop()
            llm.stop()
    ours = runs[default]
    out = {
        "parameters": {"personas": personas, "llm_latency_ms": latency_ms, "ack_wait_seconds": default},
        "items_redelivered": ours["items_redelivered"],
        "recovery_seconds": ours["recovery_seconds"],
        "job_seconds_after_kill": ours["job_seconds_after_kill"],
        "runs": {str(k): v for k, v in runs.items()},
        "target": "every item of a dead generator delivered again within 10 s of the kill",
    }
    if 30.0 in runs:
        out["recovery_seconds_with_30s_ack_wait"] = runs[30.0]["recovery_seconds"]
    return out


async def _kill_one_generator(d: harness.Deployment, llm, personas: int) -> dict:
    import httpx

    from contracts import subjects
    from services.adapters.event_log import EventLog
    from services.runtime.settings import Settings
    from tests.flows import create_personas, create_template, cycle_modes, start_job
    from tests.sse_client import read_sse

    event_log = await EventLog.connect(Settings(nats_url=d.nats_url), "bench-recovery")
    try:
        async with httpx.AsyncClient(base_url=d.base_url, timeout=120) as client:
            template_id = await create_template(client, SCENARIO)
            ids = [p["id"] for p in await create_personas(client, template_id, personas)]
            job = await start_job(client, template_id, cycle_modes(ids))
            deadline = time.monotonic() + 60
            while llm.stats()["in_flight"] < personas:  # every call under way
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the LLM calls never all ran at once: {llm.stats()['in_flight']}")
                await asyncio.sleep(0.02)
            os.kill(d.pids()["generator"], signal.SIGKILL)
            killed_at = datetime.now(UTC)
            final = await read_sse(client, job["sse_endpoint"])
        history = [s async for s in event_log.read(subjects.job_history(job["job_id"]))]
    finally:
        await event_log.close()
    results = final.messages[-1].data["results"]
    again: dict[str, datetime] = {}
    for s in history:
        if s.event is not None and s.event.type == "persona.progress" and s.event.attempt >= 2:
            again.setdefault(s.event.persona_id, s.time)
    delays = sorted((at - killed_at).total_seconds() for at in again.values())
    ended = max(s.time for s in history if s.event is not None and s.event.type == "job.completed")
    completed = [s.event.persona_id for s in history if s.event is not None and s.event.type == "persona.completed"]
    return {
        "items_redelivered": len(again),
        "recovery_seconds": {"first": round(delays[0], 2), "last": round(delays[-1], 2)} if delays else None,
        "job_seconds_after_kill": round((ended - killed_at).total_seconds(), 2),
        "successful": results["successful"],
        "completed_once": sorted(completed) == sorted(ids),
    }
