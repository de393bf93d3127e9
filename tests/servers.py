"""Real servers for tests: nats-server with JetStream and a MongoDB-wire server.

``NATS_URL`` / ``MONGO_URL`` point the tests at existing servers instead.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from services.cli import embedded


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class NatsServer:
    """A nats-server we own: can be stopped and started again on the same port and data."""

    def __init__(self, data_dir: Path, port: int | None = None, max_payload: str = "8MB", *,
                 extra_config: str = "", env: dict[str, str] | None = None) -> None:
        """``extra_config`` is appended to the configuration (users, TLS), ``env`` added to the
        server's environment (the variables that configuration names)."""
        self.port = port or embedded.free_port()
        self.conf = embedded.nats_config(data_dir, self.port, max_payload, extra_config)
        self.env = os.environ | (env or {})
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return embedded.nats_url(self.port)

    def start(self) -> NatsServer:
        self.proc = subprocess.Popen(embedded.nats_argv(self.conf), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env=self.env)
        wait_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc:
            stop(self.proc)


class NatsCluster:
    """Three nats-servers on loopback forming one JetStream cluster (routes on 127.0.0.1, a store
    of its own each): R3 streams on one machine, and a node to kill."""

    def __init__(self, root: Path, size: int = 3, name: str = "promptgen-test") -> None:
        self.names = [f"n{i}" for i in range(1, size + 1)]
        self.ports = {n: embedded.free_port() for n in self.names}
        routes = {n: embedded.free_port() for n in self.names}
        self.confs: dict[str, Path] = {}
        for node in self.names:
            data = root / node
            data.mkdir(parents=True, exist_ok=True)
            self.confs[node] = data / "nats.conf"
            self.confs[node].write_text(f"""server_name: {node}
listen: 127.0.0.1:{self.ports[node]}
max_payload: 8MB
jetstream {{
  store_dir: "{(data / 'jetstream').resolve()}"
  sync_interval: always
}}
cluster {{
  name: {name}
  listen: 127.0.0.1:{routes[node]}
  routes: [{", ".join(f"nats://127.0.0.1:{port}" for port in routes.values())}]
}}
""")
        self.procs: dict[str, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        """Every node, as the comma-separated seed list NATS_URL takes."""
        return ",".join(embedded.nats_url(self.ports[n]) for n in self.names)

    def start(self, node: str | None = None) -> NatsCluster:
        for name in [node] if node else self.names:
            self.procs[name] = subprocess.Popen(embedded.nats_argv(self.confs[name]), stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL)
        for name in [node] if node else self.names:
            wait_port(self.ports[name], proc=self.procs[name])
        return self

    def kill(self, node: str) -> None:
        """SIGKILL one node."""
        self.procs[node].kill()
        self.procs[node].wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            stop(proc)


class MongoServer:
    def __init__(self, storage: str = ":memory:", port: int | None = None, log: Path | None = None) -> None:
        """``log``: where the server's output goes (discarded without one)."""
        self.port = port or embedded.free_port()
        self.storage = storage
        self.log = log
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return embedded.mongo_url(self.port)

    def start(self) -> MongoServer:
        with open(self.log, "ab") if self.log else open(os.devnull, "wb") as out:
            self.proc = subprocess.Popen(embedded.mongo_argv(self.storage, self.port), stdout=out,
                                         stderr=subprocess.STDOUT)
        wait_port(self.port, timeout=30, proc=self.proc)
        return self

    def check(self) -> None:
        """Raise, with the end of its log, if the server has exited: a test that would fail on
        refused connections says why instead."""
        if self.proc is None or self.proc.poll() is None:
            return
        tail = self.log.read_text(errors="replace")[-4000:] if self.log else "(no log kept)"
        raise RuntimeError(f"the MongoDB-wire server on port {self.port} exited with "
                           f"{self.proc.returncode}; its log ends:\n{tail}")

    def stop(self) -> None:
        if self.proc:
            stop(self.proc)


@contextmanager
def mongo_server(tmp_root: Path) -> Iterator[MongoServer | None]:
    """A MongoDB-wire server logging into ``tmp_root``, or None when MONGO_URL names one."""
    if os.environ.get("MONGO_URL"):
        yield None
        return
    server = MongoServer(log=tmp_root / "mongo.log").start()
    try:
        yield server
    finally:
        server.stop()
