"""`make bench-quick` inside the test suite, so the benchmark harness never rots."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.run import SCENARIOS

pytestmark = pytest.mark.timeout(300)


def test_every_benchmark_scenario_runs_at_tiny_sizes(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    for name in SCENARIOS:
        result = json.loads((tmp_path / f"{name}.json").read_text())
        assert "error" not in result, result.get("error")
        assert result["quick"] is True and result["machine"]["cpus"]
    summary = (tmp_path / "summary.md").read_text()
    assert summary.count("\n|") >= len(SCENARIOS) + 1
    assert (tmp_path / "chart.png").stat().st_size > 1000
    fanout = json.loads((tmp_path / "sse_fanout.json").read_text())
    assert fanout["clients_complete"] == fanout["clients"]  # every client got every message
