"""Where each process's time goes under the overhead-bound load (offline provider):

    .venv/bin/pip install py-spy   # a profiler, not a dependency of the project
    python -m bench.profile_mongo [--jobs 20] [--personas 100] > bench/results/profile_overhead_mongodb.txt
    python -m bench.profile_mongo --processes mongodb,projector,gateway,generator

Starts `promptgen up`, samples each named process (the MongoDB-wire server by default) with
py-spy while a load generator runs, and prints per process the share of its busy samples
(threads waiting for a request left out) per function, inclusive.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import harness
from bench.measure import run_loadgen

IDLE = ("_recv_exactly", "_readable", "Condition.wait", "socket.accept", "Event.wait")


def busy_shares(raw: Path, top: int) -> tuple[int, list[tuple[float, str]]]:
    """(busy samples, [(share of them, function)]) from py-spy's raw output, inclusive."""
    inclusive: collections.Counter[str] = collections.Counter()
    busy = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if any(idle in frames[-1] for idle in IDLE):
            continue
        busy += int(count)
        for name in {f.split(" (")[0] for f in frames}:
            inclusive[name] += int(count)
    return busy, [(n / max(1, busy), name) for name, n in inclusive.most_common(top)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--personas", type=int, default=100)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--processes", default="mongodb",
                        help="comma-separated: mongodb, projector, gateway, generator")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    folder = Path(tempfile.mkdtemp(prefix="promptgen-profile-"))
    names = args.processes.split(",")
    d = harness.start()
    try:
        pids = d.pids()
        recorders = [subprocess.Popen([spy, "record", "--pid", str(pids[name]), "-o", str(folder / f"{name}.txt"),
                                       "-f", "raw", "-r", "50"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for name in names]
        time.sleep(1)
        t = time.perf_counter()
        run_loadgen(d.base_url, jobs=args.jobs, personas=args.personas)
        wall = time.perf_counter() - t
        for recorder in recorders:
            recorder.send_signal(2)
            recorder.wait()
    finally:
        d.stop()
    print(f"{args.jobs} jobs x {args.personas} personas in {wall:.1f} s; load average {os.getloadavg()[0]:.2f}")
    for name in names:
        busy, shares = busy_shares(folder / f"{name}.txt", args.top)
        print(f"\n{name}: {busy} busy samples at 50 Hz")
        for share, function in shares:
            print(f"{100 * share:5.1f}%  {function}")


if __name__ == "__main__":
    main()
