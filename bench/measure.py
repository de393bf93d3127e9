"""Small measuring tools: CPU time per process, percentiles, the raw-limit probes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid

from pymongo import AsyncMongoClient

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (FileNotFoundError, IndexError):
        return 0.0


def scheduled_ms(pid: int) -> tuple[float, float]:
    """(ms on a core, ms waiting for one) of all the process's threads so far
    (``/proc/PID/task/*/schedstat``): the wait is how long it was ready to run but every
    core was busy."""
    ran = waited = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return 0.0, 0.0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                on_cpu, on_queue, _ = f.read().split()
        except (FileNotFoundError, ValueError):
            continue
        ran, waited = ran + int(on_cpu), waited + int(on_queue)
    return ran / 1e6, waited / 1e6


def write_calls(pid: int) -> int:
    """The write system calls the process made so far (``syscw`` of ``/proc/PID/io``)."""
    try:
        with open(f"/proc/{pid}/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("syscw:"))
    except (FileNotFoundError, PermissionError, StopIteration):
        return 0


def rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def run_loadgen(base_url: str, *, jobs: int, personas: int, watchers: int = 1, processes: int = 1) -> list[dict]:
    """Run load generator processes (each its own Python) and collect their reports."""
    procs = [
        subprocess.Popen([sys.executable, "-m", "bench.loadgen", "--base-url", base_url, "--jobs", str(jobs),
                          "--personas", str(personas), "--watchers", str(watchers)],
                         stdout=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    reports = []
    for p in procs:
        out, _ = p.communicate(timeout=3600)
        if p.returncode:
            raise RuntimeError(f"load generator failed with {p.returncode}")
        reports.append(json.loads(out))
    return reports


async def raw_jetstream_publish(nats_url: str, count: int, size: int, concurrency: int = 256) -> float:
    """Seconds to store ``count`` messages of ``size`` bytes in a file stream on the same server."""
    import nats
    from nats.js import api

    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    name = f"BENCHRAW{uuid.uuid4().hex[:6].upper()}"
    await js.add_stream(api.StreamConfig(name=name, subjects=[f"{name.lower()}.>"], storage=api.StorageType.FILE))
    payload = b"x" * size
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await js.publish(f"{name.lower()}.{i % 100}", payload, headers={"Nats-Msg-Id": str(i)})

    t = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    elapsed = time.perf_counter() - t
    await js.delete_stream(name)
    await nc.close()
    return elapsed


async def raw_mongo_write(mongo_url: str, count: int, size: int, batch: int = 500) -> float:
    """Seconds to bulk-write ``count`` documents of about ``size`` bytes on the same server."""
    client = AsyncMongoClient(mongo_url)
    coll = client["bench_raw"][uuid.uuid4().hex[:8]]
    docs = [{"_id": i, "body": "x" * size} for i in range(count)]
    t = time.perf_counter()
    for i in range(0, count, batch):
        await coll.insert_many(docs[i : i + batch], ordered=False)
    elapsed = time.perf_counter() - t
    await coll.drop()
    await client.close()
    return elapsed


async def raw_insert_read_models(mongo_url: str, db: str, batch: int = 1000) -> tuple[float, int, int]:
    """(seconds, documents, average BSON bytes) to insert a copy of every read-model document
    into fresh collections of the same server, as unordered ``insert_many`` batches of ``batch``
    (no secondary index): the write a rebuild cannot do without."""
    import bson

    from services.projector.projections import READ_MODELS

    client = AsyncMongoClient(mongo_url)
    docs = {name: await client[db][name].find({}).to_list() for name in READ_MODELS}
    scratch = client[f"bench_raw_{uuid.uuid4().hex[:6]}"]
    count = sum(len(v) for v in docs.values())
    size = sum(len(bson.encode(d)) for v in docs.values() for d in v) // max(1, count)
    t = time.perf_counter()
    for name, values in docs.items():
        for i in range(0, len(values), batch):
            await scratch[name].insert_many(values[i : i + batch], ordered=False)
    elapsed = time.perf_counter() - t
    await client.drop_database(scratch.name)
    await client.close()
    return elapsed, count, size


async def raw_stream_read(nats_url: str, stream: str) -> tuple[int, float]:
    """(messages, seconds) to read a whole stream with an ordered consumer, without decoding."""
    import nats
    from nats.js import api

    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    info = await js.stream_info(stream)
    total = info.state.messages
    t = time.perf_counter()
    sub = await js.subscribe("promptgen.>", stream=stream, ordered_consumer=True,
                             config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL))
    n = 0
    while n < total:
        await sub.next_msg(timeout=30)
        n += 1
    elapsed = time.perf_counter() - t
    await sub.unsubscribe()
    await nc.close()
    return n, elapsed


class Checkpoints:
    """The projector's checkpoint announcements (core NATS), each with the time it was heard, from
    a thread of its own: when the last prompt of a run was stored in MongoDB, without polling
    MongoDB beside the run."""

    def __init__(self, nats_url: str) -> None:
        self.nats_url = nats_url
        self.heard: list[tuple[float, int]] = []
        self._changed = threading.Condition()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._listen()), daemon=True)

    async def _listen(self) -> None:
        import nats

        from contracts.subjects import PROJECTOR_CHECKPOINT

        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        nc = await nats.connect(self.nats_url)

        async def on_msg(msg) -> None:
            with self._changed:
                self.heard.append((time.time(), int(msg.data)))
                self._changed.notify_all()

        await nc.subscribe(PROJECTOR_CHECKPOINT, cb=on_msg)
        await nc.flush()
        self._ready.set()
        await self._stop.wait()
        await nc.close()

    def __enter__(self) -> Checkpoints:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("could not subscribe to the projector's checkpoints")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def reached(self, seq: int, timeout: float = 600) -> float:
        """When a checkpoint at or past ``seq`` was first heard (waiting for it if need be)."""
        def first() -> float | None:
            return next((at for at, checkpoint in self.heard if checkpoint >= seq), None)

        with self._changed:
            if not self._changed.wait_for(lambda: first() is not None, timeout):
                raise TimeoutError(f"the projector announced no checkpoint past {seq} in {timeout} s")
            at = first()
            assert at is not None
            return at


async def last_seq(nats_url: str, stream: str = "PROMPTGEN") -> int:
    import nats

    nc = await nats.connect(nats_url)
    try:
        return (await nc.jetstream().stream_info(stream)).state.last_seq
    finally:
        await nc.close()
