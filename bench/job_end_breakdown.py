"""Where a job's end spends its time, in a running deployment: `python -m bench.job_end_breakdown`.

The deployment and the jobs of ``sse_fanout_light_clients`` (10 jobs of 100 personas, test LLM at
1 s, 20 calls in flight), without the SSE clients. A watcher follows the jobs' events in JetStream
and, for each job's end, reads the projector's checkpoint every millisecond until it passes it.
Per job, from the log's own timestamps and the watcher's clock (one machine):

* ``decide_ms``: the last persona's completion stored -> the job's end stored (the job manager:
  it reads the job's history from the log, decides, publishes);
* ``seen_ms``: the end stored -> the watcher got it (what a NATS subscriber sees);
* ``projected_ms``: the end stored -> the checkpoint read past it (the projector's fold, plus at
  most the watcher's 1 ms; what the gateway's poll waits for before a job's last SSE messages).

``--profile FILE``: py-spy (``pip install py-spy``) records the projector meanwhile, as collapsed
stacks (one line per stack with its sample count).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import nats
from nats.js import api
from pymongo import AsyncMongoClient

from bench import harness
from bench.scenarios import MockLLMProcess, _llm_env
from bench.sse_scale import _post_jobs


async def watch(nats_url: str, mongo_url: str, jobs: set[str], started: asyncio.Event) -> dict[str, dict]:
    nc = await nats.connect(nats_url)
    mongo = AsyncMongoClient(mongo_url, tz_aware=True)
    state = mongo["promptgen"]["projector_state"]
    last_persona: dict[str, float] = {}
    found: dict[str, dict] = {}
    done = asyncio.Event()
    polls: set[asyncio.Task] = set()

    async def projected(job_id: str, seq: int, stored: float) -> None:
        while True:
            doc = await state.find_one({"_id": "checkpoint"})
            if doc and doc["seq"] >= seq:
                break
            await asyncio.sleep(0.001)
        found[job_id]["projected_ms"] = round(1000 * (time.time() - stored), 1)
        if len(found) == len(jobs) and all("projected_ms" in f for f in found.values()):
            done.set()

    async def on_event(msg) -> None:
        parts = msg.subject.split(".")
        stored = msg.metadata.timestamp.timestamp()
        job_id = parts[2]
        if job_id not in jobs:
            return
        if len(parts) == 6 and parts[5] in ("completed", "failed"):
            last_persona[job_id] = max(last_persona.get(job_id, 0.0), stored)
        elif len(parts) == 4 and parts[3] in ("completed", "cancelled", "expired"):
            found[job_id] = {"decide_ms": round(1000 * (stored - last_persona.get(job_id, stored)), 1),
                             "seen_ms": round(1000 * (time.time() - stored), 1)}
            task = asyncio.create_task(projected(job_id, msg.metadata.sequence.stream, stored))
            polls.add(task)

    js = nc.jetstream()
    await js.subscribe("promptgen.job.>", cb=on_event, ordered_consumer=True,
                       deliver_policy=api.DeliverPolicy.NEW)
    started.set()
    await asyncio.wait_for(done.wait(), 1800)
    await nc.close()
    await mongo.close()
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", help="collapsed py-spy stacks of the projector to this file")
    args = parser.parse_args()
    llm = MockLLMProcess(latency_ms=1000)
    d = harness.start(env=_llm_env(llm, PROMPTGEN_WORKER_CONCURRENCY="20", PROMPTGEN_LLM_CONCURRENCY="20"))
    admin = llm.base_url.removesuffix("/v1") + "/admin"
    try:
        job_ids = asyncio.run(_post_jobs(d.base_url, 10, 100, admin))
        spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(d.pids()["projector"]),
                                "-f", "raw", "-o", args.profile], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL) if args.profile else None

        async def run() -> dict[str, dict]:
            started = asyncio.Event()
            watcher = asyncio.create_task(watch(d.nats_url, d.mongo_url, set(job_ids), started))
            await started.wait()
            async with httpx.AsyncClient() as client:
                (await client.post(f"{admin}/resume")).raise_for_status()
            return await watcher

        found = asyncio.run(run())
        if spy is not None:
            spy.send_signal(2)  # py-spy writes its file on SIGINT
            spy.wait(60)
    finally:
        d.stop()
        llm.stop()
    summary = {k: {"median": statistics.median(f[k] for f in found.values()),
                   "max": max(f[k] for f in found.values())} for k in ("decide_ms", "seen_ms", "projected_ms")}
    json.dump({"jobs": found, "summary": summary}, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
