"""A hung asynchronous test whose timeout is swallowed (it lands in another task's step) is
ended by the suite's backstop, which says where it hung, on stderr, whether the test runs in
pytest's own process or in a pytest-xdist worker (whose stdout is /dev/null)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

HANGING = '''
import asyncio, pathlib, subprocess, sys, time

async def test_hangs_while_another_task_computes():
    # a server the test started, and one that server started: neither may outlive the run
    server = subprocess.Popen([sys.executable, "-c", "import pathlib, subprocess, sys, time; "
                               "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
                               "pathlib.Path('child.pid').write_text(str(child.pid)); time.sleep(300)"])
    pathlib.Path("server.pid").write_text(str(server.pid))
    while not pathlib.Path("child.pid").exists():
        time.sleep(0.01)

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
    for started in ("server.pid", "child.pid"):
        assert not _alive(int((tmp_path / started).read_text())), started


def _alive(pid: int) -> bool:
    """Running, or not yet reaped by its new parent after SIGKILL (a zombie counts as ended)."""
    deadline = time.monotonic() + 5  # SIGKILL was sent before pytest's process ended; its delivery is the kernel's
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[0]
        except OSError:
            return False
        if state in (b"Z", b"X"):
            return False
        time.sleep(0.05)
    return True
