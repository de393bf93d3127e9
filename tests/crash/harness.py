"""Real processes for fault-injection tests: each service a child process we can kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from services.cli.embedded import free_port
from tests.servers import MongoServer, NatsCluster, NatsServer, stop

READY_TIMEOUT = 30


class Service:
    def __init__(self, name: str, command: str, env: dict[str, str], log_dir: Path) -> None:
        self.name, self.command, self.env = name, command, env
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Service:
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "services.cli", self.command], env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> Service:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_path.read_text()[-2000:]}")
            if '"service_ready"' in self.log_path.read_text():
                return self
            time.sleep(0.02)
        raise TimeoutError(f"{self.name} not ready: {self.log_path.read_text()[-2000:]}")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            stop(self.proc)

    def lines(self) -> list[str]:
        return self.log_path.read_text().splitlines()


class Deployment:
    """nats-server (file storage; or the cluster given as ``nats``), a MongoDB-wire server on
    disk, and services as processes."""

    def __init__(self, root: Path, nats: NatsServer | NatsCluster | None = None, **env: str) -> None:
        self.root = root
        self.nats = nats or NatsServer(root / "nats").start()
        self.mongo = MongoServer(storage=str(root / "mongo"), port=free_port()).start()
        self.db = f"crash_{uuid.uuid4().hex[:8]}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "MONGO_", "PROMPTGEN_"))}
        # A short ack wait unless the test says otherwise (one measures the default's).
        self.env.update({"NATS_URL": self.nats.url, "MONGO_URL": self.mongo.url, "MONGO_DB": self.db,
                         "PROMPTGEN_ACK_WAIT_SECONDS": "2", "PROMPTGEN_LOG_LEVEL": "info", "PYTHONUNBUFFERED": "1",
                         # several generators and projectors side by side: each its own free ops port
                         "PROMPTGEN_GENERATOR_HTTP_PORT": "0", "PROMPTGEN_PROJECTOR_HTTP_PORT": "0"} | env)
        self.services: list[Service] = []

    def start(self, command: str, **env: str) -> Service:
        name = f"{command}{sum(1 for s in self.services if s.command == command) + 1}"
        svc = Service(name, command, self.env | env, self.root).start()
        self.services.append(svc)
        return svc.wait_ready()

    def start_gateway(self) -> tuple[Service, str]:
        port = free_port()
        svc = self.start("gateway", PROMPTGEN_PORT=str(port))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    return svc, url
            except httpx.HTTPError:
                time.sleep(0.02)
        raise TimeoutError("gateway did not answer /healthz")

    def start_all(self) -> tuple[Service, Service, Service, str]:
        """projector, generator and gateway; returns them and the gateway's URL."""
        projector, generator = self.start("projector"), self.start("generator")
        gateway, url = self.start_gateway()
        return projector, generator, gateway, url

    def close(self) -> None:
        for svc in self.services:
            svc.stop()
        # pytest shows this only for a failing test: the last words of every service
        for svc in self.services:
            print(f"--- {svc.name} (last 20 lines of {svc.log_path}) ---")
            print("\n".join(svc.lines()[-20:]))
        self.nats.stop()
        self.mongo.stop()
