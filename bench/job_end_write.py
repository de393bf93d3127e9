"""What the projector's write of a job's end costs the embedded MongoDB-wire server, and a batch
of persona events: `python -m bench.job_end_write [--jobs N] [--personas N]`.

One SecantusDB on disk with ``--sync-on-commit`` (as `promptgen up` starts it). For each job of
``--personas`` personas: its request and every persona's completion are stored first, then its
end is written as the projector writes it, alone in a batch, timed; then a batch of 20 persona
completions of another job, timed. Each way of writing, on the same server, in turn:

* ``transaction``: the batch and its checkpoint in one transaction (the fold now);
* ``write by write``: each write committed on its own, the checkpoint last
  (``PROMPTGEN_MONGO_TRANSACTIONS=off``);
* ``write by write, end rewrites personas``: as before this change, the end also set every
  persona document's ``expire_at`` (an update of many).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from pymongo import AsyncMongoClient

from bench.measure import cpu_seconds
from services.adapters.read_models import CollectionWrites, ReadModels, Transactions
from services.cli import embedded
from services.projector.projections import JOB_PERSONAS, Change, coalesce, split_creations, writes_for
from tests.samples import job_requested, results, sample

KEEP = timedelta(days=7)


def _plan(events: list, first_seq: int, old_retention: bool) -> list[CollectionWrites]:
    writes: dict[str, list[Change]] = {}
    for seq, event in enumerate(events, first_seq):
        for collection, change in writes_for(event, seq, KEEP):
            writes.setdefault(collection, []).append(change)
        if old_retention and event.type == "job.completed":
            writes.setdefault(JOB_PERSONAS, []).append(
                Change({"job_id": event.job_id}, {"$set": {"expire_at": event.occurred_at + KEEP}}, many=True))
    return [CollectionWrites(c, *split_creations(coalesce(ops))) for c, ops in writes.items()]


async def _store(models: ReadModels, plan: list[CollectionWrites], seq: int, transaction: bool) -> None:
    if transaction and await models.write_batch(plan, seq):
        return
    for w in plan:
        if w.docs:
            await models.insert_new(w.collection, w.docs)
        if w.updates:
            await models.apply(w.collection, w.updates)
    await models.save_checkpoint(seq)


def _job(job_id: str, personas: int) -> tuple[list, list]:
    pids = tuple(f"p{i}" for i in range(personas))
    request = job_requested(job_id, pids)
    done = [sample("persona.completed").model_copy(update={"job_id": job_id, "persona_id": p}) for p in pids]
    end = sample("job.completed").model_copy(update={"job_id": job_id,
                                                     "results": results(dict.fromkeys(pids, "completed"))})
    return [request, *done], [end]


async def measure(url: str, jobs: int, personas: int, server_pid: int) -> dict[str, dict[str, float]]:
    client = AsyncMongoClient(url, tz_aware=True)
    ways = {"transaction": (True, False), "write by write": (False, False),
            "write by write, end rewrites personas": (False, True)}
    out: dict[str, dict[str, float]] = {}
    seq = 0
    for name, (transaction, old_retention) in ways.items():
        models = ReadModels(client[f"bench_{len(out)}"], transactions=Transactions(None if transaction else False))
        await models.ensure_indexes()
        ends, batches = [], []
        cpu = cpu_seconds(server_pid)
        for j in range(jobs):
            before, end = _job(f"j{j}", personas)
            seq += len(before)
            await _store(models, _plan(before, seq - len(before) + 1, old_retention), seq, transaction)
            seq += 1
            plan = _plan(end, seq, old_retention)
            t = time.perf_counter()
            await _store(models, plan, seq, transaction)
            ends.append(1000 * (time.perf_counter() - t))
            other, _ = _job(f"k{j}", 20)
            seq += 1
            await _store(models, _plan(other[:1], seq, old_retention), seq, transaction)
            plan = _plan(other[1:], seq + 1, old_retention)
            seq += 20
            t = time.perf_counter()
            await _store(models, plan, seq, transaction)
            batches.append(1000 * (time.perf_counter() - t))
        out[name] = {"job_end_ms_median": round(statistics.median(ends), 2), "job_end_ms_max": round(max(ends), 2),
                     "batch_of_20_completions_ms_median": round(statistics.median(batches), 2),
                     "server_cpu_seconds": round(cpu_seconds(server_pid) - cpu, 2)}
    await client.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--personas", type=int, default=100)
    args = parser.parse_args()
    port = embedded.free_port()
    with tempfile.TemporaryDirectory(prefix="promptgen-bench-") as tmp:
        proc = subprocess.Popen(embedded.mongo_argv(str(Path(tmp) / "db"), port), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            from tests.servers import wait_port

            wait_port(port, timeout=30, proc=proc)
            figures = asyncio.run(measure(embedded.mongo_url(port), args.jobs, args.personas, proc.pid))
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"{args.jobs} jobs of {args.personas} personas (median and max ms per write of a job's end; "
          "median ms per batch of 20 persona completions; the server's CPU seconds for all of each way)")
    for name, f in figures.items():
        print(f"{name:40} end {f['job_end_ms_median']:8.2f} (max {f['job_end_ms_max']:8.2f})   "
              f"20 completions {f['batch_of_20_completions_ms_median']:8.2f}   "
              f"server CPU {f['server_cpu_seconds']:6.2f} s")


if __name__ == "__main__":
    main()
