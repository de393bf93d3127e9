"""`promptgen up`: start every part as a child process, wait until each is ready,
restart what dies, and stop everything in reverse order on Ctrl-C or SIGTERM.

Children run in their own session (a terminal's Ctrl-C reaches only us, so we
choose the stop order) and die with us if we are killed (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

ReadyCheck = Callable[[], Awaitable[bool]]


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


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


class Supervisor:
    def __init__(self, out=sys.stdout) -> None:
        self.children: list[Child] = []
        self.stopping = False
        self.out = out
        self._watchers: list[asyncio.Task] = []

    def say(self, name: str, line: str) -> None:
        self.out.write(f"{name:>10} | {line}\n")
        self.out.flush()

    async def _spawn(self, child: Child) -> None:
        child.ready.clear()
        child.proc = await asyncio.create_subprocess_exec(
            *child.argv,
            env=child.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self._watchers.append(asyncio.create_task(self._pump(child, child.proc)))

    async def _pump(self, child: Child, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if '"service_ready"' in line:
                child.ready.set()
            if not child.hide(line):
                self.say(child.name, line)
        code = await proc.wait()
        if self.stopping or child.proc is not proc:
            return
        child.restarts += 1
        self.say(child.name, f"exited with code {code}; restarting (restart #{child.restarts})")
        await asyncio.sleep(min(5.0, 0.5 * child.restarts))
        if not self.stopping:
            await self._spawn(child)

    async def start(self, child: Child, timeout: float = 60) -> None:
        self.children.append(child)
        await self._spawn(child)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
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

    async def stop(self, grace: float = 10) -> None:
        """Stop children newest first: SIGTERM, then SIGKILL after ``grace`` seconds."""
        self.stopping = True
        for child in reversed(self.children):
            proc = child.proc
            if proc is None or proc.returncode is not None:
                continue
            self.say(child.name, "stopping")
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                self.say(child.name, f"did not stop in {grace:.0f}s; killing")
                proc.kill()
                await proc.wait()
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)


def child_env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(overrides)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
