"""Start and stop a whole promptgen deployment for a benchmark, as a user would (`promptgen up`)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.cli.embedded import free_port
from tests.servers import stop


@dataclass
class Deployment:
    base_url: str
    nats_url: str
    mongo_url: str
    data_dir: Path
    proc: subprocess.Popen
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        stop(self.proc, timeout=60)  # SIGTERM: `promptgen up` stops its children in order

    def pids(self) -> dict[str, int]:
        """name -> pid of each child (from `ps`), for per-process measurements."""
        out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(self.proc.pid)], capture_output=True,
                             text=True).stdout
        pids: dict[str, int] = {}
        for line in out.splitlines():
            pid, args = line.strip().split(" ", 1)
            for name in ("gateway", "generator", "projector"):
                if f"services.cli {name}" in args:
                    key = name if name not in pids else f"{name}{sum(k.startswith(name) for k in pids) + 1}"
                    pids[key] = int(pid)
            if "nats-server" in args:
                pids["nats"] = int(pid)
            if "secantusd" in args:
                pids["mongodb"] = int(pid)
        return pids


def start(*, generators: int = 1, env: dict[str, str] | None = None, timeout: float = 90) -> Deployment:
    port, nats_port, mongo_port = free_port(), free_port(), free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="promptgen-bench-"))
    log_path = data_dir / "up.log"
    full_env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "MONGO_URL")}
    full_env.update({"PROMPTGEN_LOG_LEVEL": "warning", **(env or {})})
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up", "--port", str(port), "--data-dir", str(data_dir / "data"),
         "--nats-port", str(nats_port), "--mongo-port", str(mongo_port), "--generators", str(generators)],
        stdout=log_path.open("w"), stderr=subprocess.STDOUT, env=full_env,
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"promptgen up exited: {log_path.read_text()[-3000:]}")
        if "Press Ctrl-C to stop" in log_path.read_text():
            break
        time.sleep(0.1)
    else:
        proc.kill()
        raise TimeoutError(f"promptgen up not ready: {log_path.read_text()[-3000:]}")
    httpx.get(f"{base_url}/healthz", timeout=5).raise_for_status()
    return Deployment(base_url, f"nats://127.0.0.1:{nats_port}",
                      f"mongodb://127.0.0.1:{mongo_port}/?directConnection=true", data_dir, proc, log_path,
                      full_env)


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }
