"""Where the gateway's time goes while it takes large job requests (offline provider):

    .venv/bin/pip install py-spy   # a profiler, not a dependency of the project
    python -m bench.profile_job_request [--jobs 40] [--personas 320] [--seconds 30]

Starts `promptgen up`, creates ``--personas`` personas, then posts ``--jobs`` jobs of all of
them one after the other (nobody watches them) while py-spy samples the gateway for
``--seconds``; prints the POSTs' times and the share of the gateway's busy samples per
function, inclusive.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench import harness
from bench.loadgen import make_personas
from bench.profile_mongo import busy_shares


async def _personas(base_url: str, count: int) -> tuple[str, list[str]]:
    async with httpx.AsyncClient(base_url=base_url, timeout=None) as client:
        return await make_personas(client, count)


async def _post_jobs(base_url: str, template_id: str, ids: list[str], jobs: int) -> list[float]:
    modes = ("learn_mode", "try_mode", "assess_mode")
    mapping = {pid: modes[i % 3] for i, pid in enumerate(ids)}
    async with httpx.AsyncClient(base_url=base_url, timeout=None) as client:
        await asyncio.sleep(2)  # py-spy attached
        times = []
        for _ in range(jobs):
            started = time.perf_counter()
            r = await client.post("/scenario/v2/generate-final-prompts",
                                  json={"template_id": template_id, "persona_ids": ids, "mode_mapping": mapping})
            r.raise_for_status()
            times.append(time.perf_counter() - started)
        return sorted(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--personas", type=int, default=320)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--top", type=int, default=60)
    args = parser.parse_args()
    d = harness.start(env={"PROMPTGEN_PROVIDER": "offline"})
    raw = d.data_dir / "gateway.raw"
    try:
        template_id, ids = asyncio.run(_personas(d.base_url, args.personas))
        spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw",
                                "-r", "200", "-o", str(raw), "-p", str(d.pids()["gateway"]),
                                "-d", str(args.seconds)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times = asyncio.run(_post_jobs(d.base_url, template_id, ids, args.jobs))
        spy.wait()
    finally:
        d.stop()
    print(f"{args.jobs} jobs x {args.personas} personas posted; POST p50 {times[len(times) // 2] * 1000:.0f} ms, "
          f"fastest {times[0] * 1000:.0f} ms")
    busy, shares = busy_shares(raw, args.top)
    print(f"gateway: {busy} busy samples at 200 Hz in {args.seconds} s")
    for share, function in shares:
        print(f"{share:6.1%}  {function}")


if __name__ == "__main__":
    main()
