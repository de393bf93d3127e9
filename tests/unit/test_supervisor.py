"""`promptgen up`'s supervisor: any child output is drained, and stop() stops every child."""

from __future__ import annotations

import asyncio
import signal
import sys

import pytest

from services.cli.supervisor import Child, ChildRefused, LineSplitter, Supervisor, child_env, server_env
from services.cli.up import DataDirInUse, hold_data_dir
from tests.waiting import eventually

# A 1 MB line, then more than a pipe holds, then readiness, then output until it is stopped.
NOISY = r"""
import json, sys
sys.stdout.write("x" * (1 << 20) + "\n")
for i in range(5000):
    sys.stdout.write(f"before ready {i} " + "y" * 100 + "\n")
print(json.dumps({"event": "service_ready"}), flush=True)
i = 0
while True:
    i += 1
    print(f"tick {i}", flush=True)
"""

QUIET = r"""
import json, time
print(json.dumps({"event": "service_ready"}), flush=True)
time.sleep(600)
"""


class Terminal:
    """What a person would see; ``broken`` makes it fail as a closed pipe does."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.broken = False
        self.ticking = asyncio.Event()

    def write(self, text: str) -> None:
        if self.broken:
            raise BrokenPipeError(32, "Broken pipe")
        self.lines.append(text)
        if "| tick 1000\n" in text:
            self.ticking.set()

    def flush(self) -> None:
        if self.broken:
            raise BrokenPipeError(32, "Broken pipe")


def _child(name: str, code: str) -> Child:
    return Child(name, [sys.executable, "-c", code], child_env())


def test_line_splitter_cuts_long_lines_and_says_by_how_much():
    lines = LineSplitter(keep=4)
    assert lines.feed(b"ab") == []
    assert lines.feed(b"cdefg\nhi\nj") == ["abcd … [3 more bytes cut]", "hi"]
    assert lines.feed(b"k\n") == ["jk"]
    assert lines.feed(b"tail") == [] and lines.flush() == ["tail"]
    assert lines.flush() == []


async def test_a_child_printing_a_huge_line_is_still_drained_and_stopped():
    terminal = Terminal()
    sup = Supervisor(out=terminal)
    child = _child("noisy", NOISY)
    try:
        # Readiness comes after 1.5 MB of output: it is seen only if every byte was drained.
        await sup.start(child, timeout=30)
        await asyncio.wait_for(terminal.ticking.wait(), 30)  # still drained after readiness
    finally:
        await sup.stop(grace=10)
    cut = (1 << 20) - 16 * 1024
    assert terminal.lines[0].endswith(f"… [{cut} more bytes cut]\n")
    assert any("| before ready 4999 " in line for line in terminal.lines)
    assert child.proc.returncode == -signal.SIGTERM  # stopped, not killed after the grace
    assert not any("killing" in line for line in terminal.lines)


async def test_stop_stops_every_child_even_when_our_own_output_is_gone():
    terminal = Terminal()
    sup = Supervisor(out=terminal)
    children = [_child("first", QUIET), _child("second", QUIET)]
    try:
        for child in children:
            await sup.start(child, timeout=30)
        terminal.broken = True  # e.g. `promptgen up | tee log` and tee was killed
        await sup.stop(grace=10)
        assert [c.proc.returncode for c in children] == [-signal.SIGTERM, -signal.SIGTERM]
    finally:
        for child in children:
            if child.proc.returncode is None:
                child.proc.kill()
                await child.proc.wait()


@pytest.mark.parametrize("keep", [1, 16])
def test_line_splitter_keeps_line_boundaries_whatever_the_chunks(keep):
    data = b"one\n" + b"z" * 40 + b"\nthree\n"
    lines = LineSplitter(keep=keep)
    out = [line for i in range(len(data)) for line in lines.feed(data[i : i + 1])]
    whole = LineSplitter(keep=keep).feed(data)
    assert out == whole and len(out) == 3


def test_a_server_gets_what_a_program_needs_and_none_of_our_variables(monkeypatch):
    ours = {"OPENAI_API_KEY": "sk-1", "OPENAI_API_KEY_FILE": "/run/secrets/k", "PROMPTGEN_STREAM_TOKEN_SECRET": "s",
            "NATS_URL": "nats://user:pw@nats:4222", "MONGO_URL": "mongodb://u:pw@m/", "ANY_OTHER_TOKEN": "t"}
    for name, value in {**ours, "PATH": "/usr/bin", "HOME": "/home/x", "LC_ALL": "C.UTF-8"}.items():
        monkeypatch.setenv(name, value)
    env = server_env()
    assert not set(ours) & set(env)
    assert env["PATH"] == "/usr/bin" and env["HOME"] == "/home/x" and env["LC_ALL"] == "C.UTF-8"


def test_a_service_keeps_our_environment_less_what_it_drops_in_any_case(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-1")
    monkeypatch.setenv("openai_api_key", "sk-2")  # settings read a variable whatever its case
    monkeypatch.setenv("NATS_URL", "nats://127.0.0.1:4222")
    env = child_env(drop=["OPENAI_API_KEY"], MONGO_URL="mongodb://127.0.0.1:27017")
    assert "OPENAI_API_KEY" not in env and "openai_api_key" not in env
    assert env["NATS_URL"] == "nats://127.0.0.1:4222" and env["MONGO_URL"] == "mongodb://127.0.0.1:27017"


async def test_exit_code_2_is_a_refusal_from_our_services_and_a_crash_from_a_server(tmp_path):
    """Our services exit 2 on a configuration they refuse: not restarted. A Go server (nats-server)
    exits 2 when it panics: restarted, as any crash."""
    terminal = Terminal()
    sup = Supervisor(out=terminal)
    ours = Child("gateway", [sys.executable, "-c", "import sys; sys.exit(2)"], child_env(), ours=True)
    marker = tmp_path / "crashed-once"
    server = _child("nats", "import os, sys, time\n"
                            f"p = {str(marker)!r}\n"
                            "if not os.path.exists(p):\n    open(p, 'w').close(); sys.exit(2)\n"
                            "print('{\"event\": \"service_ready\"}', flush=True); time.sleep(60)")
    try:
        with pytest.raises(ChildRefused, match="gateway refused its configuration"):
            await sup.start(ours, timeout=30)
        assert sup.refused.is_set() and ours.restarts == 0
        await sup.start(server, timeout=30)  # ready once started again
        assert server.restarts == 1
    finally:
        await sup.stop(grace=5)
    assert any("nats | exited with code 2; restarting" in line for line in terminal.lines), terminal.lines


# A service that starts a helper process sharing its output (as a rebuild's worker processes do),
# then says it is ready; it waits, and the helper outlives it.
WITH_A_HELPER = r"""
import json, subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(json.dumps({"event": "service_ready"}), flush=True)
time.sleep(600)
"""


async def test_a_child_killed_with_helpers_still_holding_its_output_is_restarted():
    terminal = Terminal()
    sup = Supervisor(out=terminal)
    child = _child("projector", WITH_A_HELPER)
    try:
        await sup.start(child, timeout=30)
        first = child.proc
        helper = int((await asyncio.to_thread(_children_of, first.pid))[0])
        first.kill()

        async def restarted():
            return child.proc is not first and child.ready.is_set()
        await eventually(restarted, timeout=30, what="the child restarted and ready")

        async def helper_gone():
            return not _alive(helper)
        await eventually(helper_gone, timeout=10, what="the helper it left behind stopped")
        assert any("projector | exited with code -9; restarting" in line for line in terminal.lines)
    finally:
        await sup.stop(grace=5)


# Ready on a port of its own, a new one each start (as a service given port 0), then it dies once.
NEW_PORT_EACH_START = r"""
import json, os, sys, time
print(json.dumps({"event": "service_ready", "http_port": os.getpid()}), flush=True)
time.sleep(0.2 if not os.path.exists(sys.argv[1]) else 600)
open(sys.argv[1], "w").close()
"""


async def test_a_child_restarted_on_another_ops_port_says_where_it_is_now(tmp_path):
    terminal = Terminal()
    sup = Supervisor(out=terminal)
    child = Child("gateway2", [sys.executable, "-c", NEW_PORT_EACH_START, str(tmp_path / "died")], child_env())
    try:
        await sup.start(child, timeout=30)
        first = child.announced["http_port"]

        async def moved():
            return child.announced.get("http_port") != first
        await eventually(moved, timeout=30, what="the child restarted on another port")
        now = child.announced["http_port"]
        assert any(f"gateway2 | now serves /metrics, /livez and /readyz on port {now} (not {first})" in line
                   for line in terminal.lines), terminal.lines[-10:]
    finally:
        await sup.stop(grace=5)


def _children_of(pid: int) -> list[str]:
    import time
    for _ in range(200):
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            if kids := f.read().split():
                return kids
        time.sleep(0.05)
    raise AssertionError("the helper did not start")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_the_data_directory_stays_held_until_the_last_child_has_ended(tmp_path):
    """`up` killed at once leaves its servers stopping for a moment on the same store: the lock it
    hands them keeps a second `up` off the directory until the last of them has ended."""
    held = hold_data_dir(tmp_path)
    sup = Supervisor(Terminal(), keep_fds=(held.fileno(),))
    await sup.start(_child("server", QUIET))
    try:
        gone = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
        await gone.wait()
        held.seek(0)
        held.truncate()
        held.write(str(gone.pid))  # as if the `up` that wrote its pid there were gone
        held.flush()
        held.close()
        with pytest.raises(DataDirInUse) as refused:
            hold_data_dir(tmp_path)
        assert f"(process {gone.pid}, which has ended)" in str(refused.value)
    finally:
        await sup.stop()
    hold_data_dir(tmp_path).close()  # free once its last holder ended
