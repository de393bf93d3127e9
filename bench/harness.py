"""Start and stop a whole promptgen deployment for a benchmark, as a user would (`promptgen up`)."""

from __future__ import annotations

import os
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from services.testing.deployment import UpProcess


@dataclass
class Deployment:
    """A benchmark's `promptgen up` (services.testing.deployment.UpProcess) and where it listens."""

    up: UpProcess
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return self.up.base_url

    @property
    def nats_url(self) -> str:
        return self.up.nats_url

    @property
    def mongo_url(self) -> str:
        return self.up.mongo_url

    @property
    def data_dir(self) -> Path:
        return self.up.data_dir

    @property
    def log_path(self) -> Path:
        return self.up.log_path

    def stop(self) -> None:
        self.up.stop(timeout=60)  # SIGTERM: `promptgen up` stops its children in order

    def pids(self) -> dict[str, int]:
        """name -> pid of each child, for per-process measurements."""
        return self.up.pids()


def start(*, generators: int = 1, gateways: int = 1, env: dict[str, str] | None = None,
          timeout: float = 90) -> Deployment:
    up = UpProcess(Path(tempfile.mkdtemp(prefix="promptgen-bench-")), generators=generators, gateways=gateways,
                   env={"PROMPTGEN_LOG_LEVEL": "warning", **(env or {})})
    up.start(timeout)
    return Deployment(up, up.env)


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }
