"""Where a gateway's memory per SSE client goes: the gateway in this process (in-memory event
log and read models, real uvicorn on loopback), N idle clients from a separate process, and
what they cost, by RSS and by tracemalloc's allocation sites.

    python -m bench.sse_memory [--clients 2000] [--jobs 10] [--tracemalloc]

RSS is measured without tracemalloc (it adds its own bookkeeping); with ``--tracemalloc``
the top allocation sites of the clients are printed too.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tracemalloc

import uvicorn

from bench.measure import rss_mib
from services.cli.embedded import free_port
from services.gateway.app import create_app
from services.runtime.settings import Settings
from services.testing import MemoryEventLog, memory_read_models
from tests.samples import job_requested
from tests.servers import wait_port


async def _connect(base_url: str, job_ids: list[str], per_job: int) -> subprocess.Popen:
    proc = await asyncio.to_thread(subprocess.Popen, [sys.executable, "-m", "bench.sse_clients", "--base-url", base_url,
                             *[a for j in job_ids for a in ("--job", j)], "--clients-per-job", str(per_job)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = await asyncio.to_thread(proc.stdout.readline)
    assert line.startswith("connected"), line
    return proc


async def main(args: argparse.Namespace) -> None:
    from services.runtime.logs import configure_logging

    configure_logging("gateway", "warning")
    port = free_port()
    settings = Settings(provider="offline", port=port, max_sse_streams=args.clients + 1000, log_level="warning",
                        generator_http_port=0, projector_http_port=0)
    log = MemoryEventLog(settings)
    job_ids = [f"job{i}" for i in range(args.jobs)]
    for job_id in job_ids:
        await log.publish(job_requested(job_id, (f"{job_id}-p",)))
    app = create_app(settings, event_log=log, models=memory_read_models())
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False,
                                           log_level="warning", backlog=4096))
    serving = asyncio.create_task(server.serve())
    await asyncio.to_thread(wait_port, port)
    base_url = f"http://127.0.0.1:{port}"
    warm = await _connect(base_url, job_ids, 10)  # every code path imported, every channel loaded
    await asyncio.sleep(1)
    before = _rss()
    if args.tracemalloc:
        tracemalloc.start(12)
        snap0 = tracemalloc.take_snapshot()
    clients = await _connect(base_url, job_ids, args.clients // args.jobs)
    await asyncio.sleep(1)
    after = _rss()
    print(f"{args.clients} clients: RSS {before:.1f} -> {after:.1f} MiB: "
          f"{1024 * (after - before) / args.clients:.1f} KiB per client")
    if args.tracemalloc:
        snap1 = tracemalloc.take_snapshot()
        stats = snap1.compare_to(snap0, "traceback")
        total = sum(s.size_diff for s in stats)
        print(f"traced: {total / args.clients / 1024:.1f} KiB per client")
        by_line = snap1.compare_to(snap0, "lineno")
        for s in by_line[:25]:
            print(f"{s.size_diff / args.clients:8.0f} B/client  {s.count_diff / args.clients:5.1f} blocks  "
                  f"{s.traceback[0]}")
        print("\nlargest by where they were made (innermost frame last):")
        for s in stats[:25]:
            print(f"{s.size_diff / args.clients:8.0f} B/client  "
                  + " <- ".join(f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}" for f in list(s.traceback)[-5:]))
    for p in (clients, warm):
        p.kill()
        p.wait()
    server.should_exit = True
    await serving


def _rss() -> float:
    import os

    return rss_mib(os.getpid())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--tracemalloc", action="store_true")
    import uvloop

    uvloop.run(main(parser.parse_args()))
