"""Run the benchmarks: `python -m bench.run [--quick] [--only a,b] [--out DIR]`.

Writes ``<out>/<scenario>.json`` for each scenario, then ``summary.md`` and
``chart.png`` (scaling curve and latency distribution).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

from bench import harness, recovery, scenarios, sse_scale

SCENARIOS = {
    "latency_bound": scenarios.latency_bound,
    "overhead_bound": scenarios.overhead_bound,
    "sse_fanout": scenarios.sse_fanout,
    "sse_many_clients": sse_scale.sse_many_clients,
    "sse_fanout_light_clients": sse_scale.sse_fanout_light_clients,
    "sse_fanout_light_clients_two_gateways": sse_scale.sse_fanout_light_clients_two_gateways,
    "sse_many_clients_two_gateways": sse_scale.sse_many_clients_two_gateways,
    "replay_rebuild": scenarios.replay_rebuild,
    "scaling": scenarios.scaling,
    "two_generators": scenarios.two_generators,
    "generator_recovery": recovery.generator_recovery,
}
DEFAULT_OUT = Path(__file__).parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the harness in seconds")
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(SCENARIOS)
    args.out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for name in names:
        print(f"== {name} ({'quick' if args.quick else 'full'})", flush=True)
        started, load_before = time.time(), os.getloadavg()
        try:
            result = SCENARIOS[name](args.quick)
        except Exception:  # noqa: BLE001 - report and go on to the next scenario
            failures += 1
            result = {"error": traceback.format_exc()}
            print(result["error"], flush=True)
        result |= {"scenario": name, "quick": args.quick, "machine": harness.machine(),
                   "ran_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                   "duration_seconds": round(time.time() - started, 1),
                   # the machine is shared: its load (1, 5, 15 min) before and after the scenario
                   "uptime_load": {"before": load_before, "after": os.getloadavg()},
                   "command": " ".join([".venv/bin/python -m bench.run", *sys.argv[1:]])}
        (args.out / f"{name}.json").write_text(json.dumps(result, indent=2))
    from bench.report import write_report

    print(write_report(args.out), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
