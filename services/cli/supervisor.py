"""`promptgen up`: start every part as a child process, wait until each is ready,
restart what dies, and stop everything in reverse order on Ctrl-C or SIGTERM.

Children run in their own session (a terminal's Ctrl-C reaches only us, so we
choose the stop order) and die with us if we are killed (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import httpx

from services.runtime.lifecycle import die_with_parent

ReadyCheck = Callable[[], Awaitable[bool]]

READ_CHUNK_BYTES = 64 * 1024
SHOWN_LINE_BYTES = 16 * 1024  # a longer line is cut for display
STOP_GRACE_SECONDS = 10.0
CONFIGURATION_ERROR = 2  # a service's exit code when it refuses its configuration: not restarted


class StartStopped(Exception):
    """Told to stop (Ctrl-C) while a child was starting: what started is stopped, nothing failed."""


class ChildRefused(RuntimeError):
    """A child exited refusing its configuration while it was being started."""


def _kill_group(leader: int) -> bool:
    """SIGKILL what is left of a child's process group once the child itself has exited (a
    child is its own session's leader); whether anything was."""
    try:
        os.killpg(leader, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


async def tcp_ready(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


def http_ready(url: str) -> ReadyCheck:
    async def check() -> bool:
        try:
            async with httpx.AsyncClient(timeout=1) as client:
                return (await client.get(url)).status_code == 200
        except httpx.HTTPError:
            return False

    return check


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    ready_check: ReadyCheck | None = None  # None: wait for a "service_ready" log line
    hide: Callable[[str], bool] = lambda line: False  # lines not worth showing a person
    proc: asyncio.subprocess.Process | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    restarts: int = 0
    announced: dict = field(default_factory=dict)  # the fields of its last "service_ready" line
    refused: bool = False  # it exited refusing its configuration: started again, it would refuse again
    ours: bool = False  # one of our services, whose exit code 2 is a refusal (a Go server's is a crash)


class LineSplitter:
    """A child's output bytes in, its lines out. A line longer than ``keep`` bytes is cut
    for display and says how much was cut: a child may print anything, and one huge line
    must cost us neither the rest of its output nor unbounded memory."""

    def __init__(self, keep: int = SHOWN_LINE_BYTES) -> None:
        self.keep = keep
        self._head = bytearray()
        self._cut = 0

    def feed(self, chunk: bytes) -> list[str]:
        lines: list[str] = []
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            room = max(0, self.keep - len(self._head))
            self._head += piece[:room]
            self._cut += max(0, len(piece) - room)
            if end < 0:
                return lines
            lines.append(self._line())
            start = end + 1

    def flush(self) -> list[str]:
        """The last line, if the output ended without a newline."""
        return [self._line()] if self._head or self._cut else []

    def _line(self) -> str:
        line = self._head.decode(errors="replace").rstrip()
        if self._cut:
            line += f" … [{self._cut} more bytes cut]"
        self._head, self._cut = bytearray(), 0
        return line


class Supervisor:
    def __init__(self, out=sys.stdout, *, told_to_stop: asyncio.Event | None = None,
                 keep_fds: tuple[int, ...] = ()) -> None:
        """``keep_fds``: descriptors every child inherits (a lock held until the last one ends)."""
        self.children: list[Child] = []
        self.keep_fds = keep_fds
        self.stopping = False
        self.told_to_stop = told_to_stop or asyncio.Event()  # set (Ctrl-C): a start waits no more
        self.out = out
        self._watchers: list[asyncio.Task] = []
        self.refused = asyncio.Event()  # set when a child exits refusing its configuration

    def say(self, name: str, line: str) -> None:
        try:
            self.out.write(f"{name:>10} | {line}\n")
            self.out.flush()
        except (OSError, ValueError):
            pass  # our own output is gone (a closed pipe or terminal): supervising goes on

    async def _spawn(self, child: Child) -> None:
        child.ready.clear()
        child.proc = await asyncio.create_subprocess_exec(
            *child.argv,
            env=child.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
            pass_fds=self.keep_fds,
        )

    async def _watch(self, child: Child) -> None:
        """For the child's whole life: show its output, and restart it when it dies."""
        while True:
            proc = child.proc
            assert proc is not None
            if self.stopping:  # restarted just as stop() went by: it has nothing to finish
                self.say(child.name, "stopping")
                _signal(proc, signal.SIGKILL)
            pump = asyncio.create_task(self._pump(child, proc))
            # Until its output closes, or it exits while what it started and left behind (a
            # rebuild's worker processes, when it was killed) holds its output open: those go
            # with it, or it would never be restarted (and on Python 3.11 wait() waits for the
            # output to close too).
            while not pump.done() and proc.returncode is None:
                await asyncio.wait([pump], timeout=0.1)
            if not pump.done() and _kill_group(proc.pid):
                self.say(child.name, "exited; stopped the processes it had started and left behind")
            await pump
            code = await proc.wait()
            if self.stopping:
                return
            if child.ours and code == CONFIGURATION_ERROR:
                self.say(child.name, f"exited with code {code}, refusing its configuration (why: above); "
                                     "not restarted")
                child.refused = True
                self.refused.set()
                return
            child.restarts += 1
            self.say(child.name, f"exited with code {code}; restarting (restart #{child.restarts})")
            await asyncio.sleep(min(5.0, 0.5 * child.restarts))
            if self.stopping:
                return
            try:
                await self._spawn(child)
            except Exception as exc:  # noqa: BLE001 - child.proc is still the dead one: try again
                self.say(child.name, f"could not restart: {exc}")

    async def _pump(self, child: Child, proc: asyncio.subprocess.Process) -> None:
        """Drain the child's output until it closes. Read in chunks, never by line: a line
        over asyncio's 64 KiB limit would end the reading, the pipe would fill and the child
        would freeze mid-write."""
        assert proc.stdout is not None
        lines = LineSplitter()
        while True:
            try:
                chunk = await proc.stdout.read(READ_CHUNK_BYTES)
            except Exception as exc:  # noqa: BLE001 - the pipe itself broke: nothing left to drain
                self.say(child.name, f"output unreadable: {exc!r}")
                return
            for line in lines.feed(chunk) if chunk else lines.flush():
                self._show(child, line)
            if not chunk:
                return

    def _show(self, child: Child, line: str) -> None:
        try:
            if '"service_ready"' in line:
                before = child.announced.get("http_port")
                with contextlib.suppress(ValueError):
                    child.announced = json.loads(line)
                child.ready.set()
                now = child.announced.get("http_port")
                if before is not None and now != before:  # restarted on a free port: the banner's is gone
                    self.say(child.name, f"now serves /metrics, /livez and /readyz on port {now} (not {before})")
            if not child.hide(line):
                self.say(child.name, line)
        except Exception as exc:  # noqa: BLE001 - one line must not stop the draining
            self.say(child.name, f"could not show a line: {exc!r}")

    async def start(self, child: Child, timeout: float = 60) -> None:
        self.children.append(child)
        await self._spawn(child)
        self._watchers.append(asyncio.create_task(self._watch(child)))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if child.refused:
                raise ChildRefused(f"{child.name} refused its configuration (its reason is in its output above)")
            if self.told_to_stop.is_set():
                raise StartStopped(f"told to stop while {child.name} was starting")
            if child.ready_check is None:
                try:
                    await asyncio.wait_for(child.ready.wait(), timeout=0.2)
                    return
                except TimeoutError:
                    continue
            if await child.ready_check():
                child.ready.set()
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{child.name} did not become ready within {timeout:.0f}s (see its output above)")

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Stop children newest first: SIGTERM, then SIGKILL after ``grace`` seconds. Every
        child is stopped whatever happens to the others."""
        self.stopping = True
        for child in reversed(self.children):
            if child.proc is None or child.proc.returncode is not None:
                continue
            self.say(child.name, "stopping")
            try:
                await self._terminate(child, child.proc, grace)
            except Exception as exc:  # noqa: BLE001 - the next child must still be stopped
                self.say(child.name, f"could not stop cleanly: {exc!r}")
        # Each watcher ends once its child has and its output is drained (a restart that was
        # starting as we stopped is stopped by its watcher); one that does not is cancelled.
        _, late = await asyncio.wait(self._watchers, timeout=grace) if self._watchers else (set(), set())
        for task in late:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)

    async def _terminate(self, child: Child, proc: asyncio.subprocess.Process, grace: float) -> None:
        _signal(proc, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            self.say(child.name, f"did not stop in {grace:.0f}s; killing")
            _signal(proc, signal.SIGKILL)
            await proc.wait()


def _signal(proc: asyncio.subprocess.Process, sig: int) -> None:
    """Signal the child's process group (it leads its own), so whatever it started goes too."""
    if proc.returncode is not None:
        return  # reaped: its pid may belong to another process by now
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:  # it left its group: signal it alone
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def child_env(*, drop: Iterable[str] = (), **overrides: str) -> dict[str, str]:
    """A service's environment: ours, less the variables in ``drop`` (secrets it has no use for),
    with ``overrides`` in place of each variable they name, in any spelling or ``_FILE`` form (a
    setting given two ways is refused)."""
    dropped = {name.upper() for name in drop}  # settings read variables whatever their case
    dropped |= {name.upper() + suffix for name in overrides for suffix in ("", "_FILE")}
    env = {name: value for name, value in os.environ.items() if name.upper() not in dropped}
    env.update(overrides)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


# All that a server we start (nats-server, the MongoDB-wire server) is given of our environment:
# what a program needs to run. Never the LLM key, a secret file's path, the stream-token secret
# or a NATS/MongoDB URL that may hold a password: a server has no use for them, and a process's
# environment is readable by its user (/proc/<pid>/environ) and lands in its crash reports.
SERVER_VARIABLES = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TMP",
                              "TEMP", "LD_LIBRARY_PATH", "SYSTEMROOT"})


def server_env() -> dict[str, str]:
    env = {name: value for name, value in os.environ.items()
           if name in SERVER_VARIABLES or name.startswith("LC_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env
