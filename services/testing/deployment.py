"""`promptgen up` as a real process tree on free loopback ports: the one way the tests, the
browser tests and the benchmarks start a whole deployment (and stop it, leaving nothing)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from services.cli.embedded import free_port, mongo_url, nats_url
from services.cli.up import numbered

READY_LINE = "Press Ctrl-C to stop"


class UpProcess:
    def __init__(
        self,
        data_dir: Path,
        *,
        generators: int = 1,
        gateways: int = 1,
        env: dict[str, str] | None = None,
        launcher: tuple[str, ...] = (sys.executable, "-m", "services.cli"),
    ) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port, self.nats_port, self.mongo_port = free_port(), free_port(), free_port()
        self.generators, self.gateways = generators, gateways
        # Its own NATS and MongoDB, whatever the caller's environment points at, and free ports for
        # the services' metrics and health (another deployment may hold the defaults).
        self.env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "MONGO_URL")} | {
            "PROMPTGEN_GENERATOR_HTTP_PORT": "0", "PROMPTGEN_PROJECTOR_HTTP_PORT": "0"} | (env or {})
        self.launcher = list(launcher)
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.nats_url = nats_url(self.nats_port)
        self.mongo_url = mongo_url(self.mongo_port)
        self.log_path = self.data_dir / "up.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 90, *, port_option: bool = True) -> str:
        """Start and wait until it says it is up and the gateway answers; returns its output.
        ``port_option`` False: no ``--port`` (the environment names the gateway's port)."""
        self.proc = subprocess.Popen(
            [*self.launcher, "up", *(["--port", str(self.port)] if port_option else []),
             "--data-dir", str(self.data_dir / "data"),
             "--nats-port", str(self.nats_port), "--mongo-port", str(self.mongo_port),
             "--generators", str(self.generators), "--gateways", str(self.gateways)],
            stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT, env=self.env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"promptgen up exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            if READY_LINE in self.output() and self._healthy():
                return self.output()
            time.sleep(0.05)
        self.kill()
        raise TimeoutError(f"promptgen up did not come up in {timeout:.0f} s:\n{self.output()[-3000:]}")

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def children(self) -> dict[int, str]:
        """pid -> command line of every process `up` started (the supervisor's direct children)."""
        assert self.proc is not None
        found: dict[int, str] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                args = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, IndexError, ValueError):
                continue
            if ppid == self.proc.pid:
                found[int(entry.name)] = args
        return found

    def pids(self) -> dict[str, int]:
        """name -> pid of each child: gateway, generator, projector, nats, mongodb; several of a
        kind are numbered from 1 by pid (gateway1, gateway2), as ``up`` names them."""
        named: dict[str, int] = {}
        services: dict[str, list[int]] = {}
        for pid, args in sorted(self.children().items()):
            for name in ("gateway", "generator", "projector"):
                if f"services.cli {name}" in args:
                    services.setdefault(name, []).append(pid)
            if "nats-server" in args:
                named["nats"] = pid
            if "secantusd" in args:
                named["mongodb"] = pid
        for name, pids in services.items():
            named |= {numbered(name, i, len(pids)): pid for i, pid in enumerate(pids)}
        return named

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> str:
        """Signal it (SIGTERM: it stops its children in order) and wait; returns its output."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.output()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
