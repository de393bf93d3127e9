"""The embedded default's infrastructure: a JetStream nats-server and a MongoDB-wire
server, both from PyPI wheels, configured for loopback and durability."""

from __future__ import annotations

import random
import shutil
import socket
import sys
from pathlib import Path


def free_port() -> int:
    """A loopback port nothing is bound to now, for a server started next. Taken below the
    kernel's range of ports for outgoing connections where it can be: a port from that range,
    once the check lets go of it, may be given to any connection the machine opens before the
    server binds it (seen: a test's nats-server finding its port in use)."""
    lowest_outgoing = _outgoing_ports()[0]
    for _ in range(50):
        port = random.randrange(10_000, lowest_outgoing) if lowest_outgoing > 11_000 else 0
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _outgoing_ports() -> tuple[int, int]:
    """The kernel's range of local ports for outgoing connections (Linux's default if unknown)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def _venv_bin(name: str) -> str:
    """A console script of this environment (the wheels put them beside python)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"'{name}' is not installed: run `make install` (it comes with the project's wheels)")
    return found


def nats_config(data_dir: Path, port: int, max_payload: str = "8MB", extra: str = "") -> Path:
    """A JetStream config: loopback only, file storage, fsync before every ack. No users and
    no TLS: anything that reaches 127.0.0.1 may publish and subscribe to anything, which is
    what one machine's `promptgen up` needs and nothing more (deploy/nats/ is the locked
    configuration). ``extra`` is appended (tests lock it with deploy/nats/auth.conf)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    conf = data_dir / "nats.conf"
    store = (data_dir / "jetstream").resolve()
    conf.write_text(
        f"""# written by promptgen up: open (no users, no TLS), so it listens on loopback only
listen: 127.0.0.1:{port}
server_name: promptgen-embedded
max_payload: {max_payload}
jetstream {{
  store_dir: "{store}"
  # An acknowledged event is on disk: no window of loss in a crash.
  sync_interval: always
}}
{extra}"""
    )
    return conf


def nats_argv(conf: Path) -> list[str]:
    return [_venv_bin("nats-server"), "-c", str(conf)]


def mongo_argv(storage: str, port: int) -> list[str]:
    return [_venv_bin("secantusd-py"), "--host", "127.0.0.1", "--port", str(port),
            "--storage-path", storage, "--sync-on-commit", "--log-level", "WARNING"]


def mongo_url(port: int) -> str:
    return f"mongodb://127.0.0.1:{port}/?directConnection=true"


def nats_url(port: int) -> str:
    return f"nats://127.0.0.1:{port}"
