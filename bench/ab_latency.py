"""``latency_bound`` without its in-process reference, as one line of JSON: for A/B runs of two
trees in turns, each with its own virtual environment, in the same minutes.

    (cd /path/to/tree && .venv/bin/python -m bench.ab_latency LABEL) >> runs.jsonl

The line holds the label, time over the limit, the run's phases, each process's CPU seconds and
the load average after it (``bench/results/issue15-cancel-condition.md`` is such a run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from bench.scenarios import latency_bound


def main(label: str) -> None:
    result = latency_bound(False, inprocess=False)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(json.dumps({"tree": label, "commit": commit, "ratio": result["time_over_limit"],
                      "phases": result["phases_seconds"], "cpu": result["cpu_seconds_by_process"],
                      "load": [round(x, 2) for x in os.getloadavg()]}))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
