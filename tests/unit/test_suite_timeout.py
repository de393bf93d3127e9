"""A hung asynchronous test whose timeout is swallowed (it lands in another task's step) is
ended by the suite's backstop, which says where it hung, on stderr, whether the test runs in
pytest's own process or in a pytest-xdist worker (whose stdout is /dev/null)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

HANGING = '''
import asyncio, time

async def test_hangs_while_another_task_computes():
    async def compute():
        while True:
            time.sleep(0.01)  # the timeout's moment most likely lands inside this task's step
            await asyncio.sleep(0)

    task = asyncio.create_task(compute(), name="computing")
    await asyncio.Event().wait()
'''


@pytest.mark.parametrize("workers", [[], ["-n", "1"]], ids=["one process", "xdist worker"])
def test_a_hung_async_test_is_ended_saying_where_it_hung(tmp_path, workers):
    (tmp_path / "test_hanging.py").write_text(HANGING)
    # The project's pytest settings and timeout backstop: a 2 s timeout, the backstop 2 s later.
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path),
         "-p", "no:cacheprovider", "-p", "tests.timeouts", *workers, "--timeout", "2", "-o", "timeout_backstop=2",
         str(tmp_path / "test_hanging.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode != 0
    assert "test_hangs_while_another_task_computes ran 4 s, past its timeout of 2 s" in run.stderr, run.stderr[-3000:]
    # the timeout's exception ended the computing task in the test's stead; the test's task waits on
    assert "in test_hangs_while_another_task_computes" in run.stderr and "Event().wait()" in run.stderr
