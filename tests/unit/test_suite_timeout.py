"""The suite's own timeout ends a hung asynchronous test, with its stacks, instead of hanging."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

HANGING = '''
import asyncio, time

async def test_hangs_while_another_task_computes():
    async def compute():
        while True:
            time.sleep(0.01)  # the timeout's moment most likely lands inside this task's step
            await asyncio.sleep(0)

    task = asyncio.create_task(compute())
    await asyncio.Event().wait()
'''


def test_a_hung_async_test_is_ended_with_its_stacks(tmp_path):
    (tmp_path / "test_hanging.py").write_text(HANGING)
    # The project's pytest settings (its timeout method among them), a 2 s timeout for this run.
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path),
         "-p", "no:cacheprovider", "-p", "no:xdist", "--timeout", "2", str(tmp_path / "test_hanging.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=30,
    )
    assert run.returncode != 0
    assert "Timeout" in run.stdout + run.stderr
    assert "in compute" in run.stdout + run.stderr, "the stacks name where it hung"
