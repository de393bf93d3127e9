"""The generator alone under the latency-bound load: where a slot's time goes between calls.

    python -m bench.generator_latency [--jobs 10] [--personas 100] [--profile generator.txt]

Starts a nats-server (file storage, fsync on every write, as `promptgen up`), the test LLM at
500 ms and one generator process with 64 calls in flight: no gateway, projector or MongoDB.
Publishes the jobs' `job.requested` events itself, waits for every persona's `completed`
event, and prints one JSON object: the wall time against the limit, when the work items were
stored and the calls started (from the test LLM), and the CPU seconds of each process.
``--profile`` samples the generator with py-spy (raw, 200 Hz; `pip install py-spy`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import nats
import nats.js.errors

from bench.measure import cpu_seconds
from contracts import subjects
from contracts.events import encode_event
from services.cli.embedded import free_port
from tests.samples import job_requested
from tests.servers import NatsServer, stop, wait_port

LATENCY_MS, CONCURRENCY = 500, 64


def _process(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "services.cli", *argv], env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


async def _run(nats_url: str, llm_port: int, pids: dict[str, int], jobs: int, per_job: int,
               profile: str | None) -> dict:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    total = jobs * per_job
    stored: list[float] = []
    completed: list[float] = []
    done = asyncio.Event()

    async def on_item(msg) -> None:
        stored.append(time.time())

    async def on_completed(msg) -> None:
        completed.append(time.time())
        if len(completed) == total:
            done.set()

    for consumer in ("generator-dispatcher", "generator-workers"):  # bound by the generator as it starts
        while True:
            try:
                await js.consumer_info("PROMPTGEN", consumer)
                break
            except nats.js.errors.NotFoundError:
                await asyncio.sleep(0.1)
    await nc.subscribe(subjects.job("*", "persona.*.requested"), cb=on_item)
    await nc.subscribe(subjects.job("*", "persona.*.completed"), cb=on_completed)
    deadline = datetime.now(UTC) + timedelta(minutes=30)
    events = [job_requested(f"job{j}", tuple(f"j{j}p{i}" for i in range(per_job)))
              .model_copy(update={"deadline": deadline, "occurred_at": datetime.now(UTC)}) for j in range(jobs)]
    spy = None
    if profile:
        spy = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pids["generator"]), "-o", profile,
            "-f", "raw", "-r", "200", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await asyncio.sleep(1)  # py-spy attaches before the load starts
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    t0 = time.time()
    await asyncio.gather(*(js.publish(e.subject(), encode_event(e), headers={"Nats-Msg-Id": e.dedup_id()})
                           for e in events))
    await asyncio.wait_for(done.wait(), 300)
    cpu = {name: round(cpu_seconds(pid) - before[name], 2) for name, pid in pids.items()}
    if spy:
        spy.send_signal(2)
        await asyncio.wait_for(spy.wait(), 60)
    await nc.close()
    async with httpx.AsyncClient() as client:
        stats = (await client.get(f"http://127.0.0.1:{llm_port}/admin/stats")).json()
    calls = sorted(stats["started"])
    limit = math.ceil(total / CONCURRENCY) * LATENCY_MS / 1000
    # With the cap held, call k (k >= cap) takes the slot call k - cap freed when it answered:
    # the gap is what a slot spends between an answer and its next call.
    gaps = sorted(calls[k] - calls[k - CONCURRENCY] - LATENCY_MS / 1000 for k in range(CONCURRENCY, len(calls)))
    wall = max(completed) - t0
    return {
        "personas": total, "wall_seconds": round(wall, 3), "limit_seconds": limit,
        "time_over_limit": round(wall / limit, 3),
        # since the jobs were published
        "first_item_stored": round(min(stored) - t0, 3), "item_64_stored": round(sorted(stored)[63] - t0, 3),
        "last_item_stored": round(max(stored) - t0, 3),
        "first_call": round(calls[0] - t0, 3), "call_64": round(calls[63] - t0, 3),
        "calls_seconds": round(calls[-1] + LATENCY_MS / 1000 - calls[0], 3),
        "slot_gap_ms": {q: round(1000 * gaps[int(f * (len(gaps) - 1))], 1)
                        for q, f in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))} if gaps else {},
        "llm_max_in_flight": stats["max_in_flight"], "cpu_seconds_by_process": cpu,
        "load": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--personas", type=int, default=100)
    parser.add_argument("--profile", help="write the generator's py-spy samples (raw) here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="promptgen-generator-latency-"))
    server = NatsServer(work / "nats").start()
    llm_port = free_port()
    llm = _process(["mock-llm", "--port", str(llm_port), "--latency-ms", str(LATENCY_MS)], dict(os.environ),
                   work / "llm.log")
    generator = None
    try:
        wait_port(llm_port, proc=llm)
        env = os.environ | {"NATS_URL": server.url, "OPENAI_BASE_URL": f"http://127.0.0.1:{llm_port}/v1",
                            "OPENAI_API_KEY": "bench", "PROMPTGEN_LOG_LEVEL": "warning",
                            "PROMPTGEN_LLM_CONCURRENCY": str(CONCURRENCY),
                            "PROMPTGEN_WORKER_CONCURRENCY": str(CONCURRENCY),
                            "PROMPTGEN_GENERATOR_HTTP_PORT": str(free_port())}
        generator = _process(["generator"], env, work / "generator.log")
        wait_port(int(env["PROMPTGEN_GENERATOR_HTTP_PORT"]), proc=generator)  # its consumers are bound
        assert server.proc is not None
        pids = {"generator": generator.pid, "test_llm": llm.pid, "nats": server.proc.pid}
        result = asyncio.run(_run(server.url, llm_port, pids, args.jobs, args.personas, args.profile))
    finally:
        for proc in (generator, llm):
            if proc is not None:
                stop(proc)
        server.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
