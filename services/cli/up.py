"""`promptgen up`: the whole system on one machine, nothing installed by hand."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sys
from pathlib import Path
from typing import IO

from rich.console import Console

from services.cli import embedded
from services.cli.supervisor import (
    Child,
    ChildRefused,
    ReadyCheck,
    StartStopped,
    Supervisor,
    child_env,
    http_ready,
    server_env,
    tcp_ready,
)
from services.runtime.lifecycle import stop_event
from services.runtime.redaction import redact
from services.runtime.settings import usable_cores, variable

console = Console(soft_wrap=True)  # a line is not cut at 80 columns when the output is a file or a pipe

# Secrets a service has no use for: the projector never calls the LLM, and only the gateway signs
# stream tokens. (NATS and MongoDB get none of ours: ``server_env``.)
LLM_SECRETS = ("OPENAI_API_KEY", "OPENAI_API_KEY_FILE")
GATEWAY_SECRETS = ("PROMPTGEN_STREAM_TOKEN_SECRET", "PROMPTGEN_STREAM_TOKEN_SECRET_FILE")
# The gateway's port is read here (--port, PROMPTGEN_PORT or its file) and given as PROMPTGEN_PORT. NATS_URL
# and MONGO_URL are set for the services only when `up` starts those servers; else the services read what
# the user set, a _FILE form included (a URL with a password stays out of their environment).
DEFAULT_PORT = 9000


def numbered(name: str, index: int, count: int) -> str:
    """The name of the ``index``-th (from 0) of ``count`` children of a kind: ``gateway`` alone,
    ``gateway1``, ``gateway2`` when there are several."""
    return f"{name}{index + 1}" if count > 1 else name


def max_gateways() -> int:
    """How many gateway processes ``up`` starts at most: each serves its clients on one core, so
    beyond two per core a typo (``--gateways 100``) would only cost memory, about 100 MB each."""
    return 2 * usable_cores()


def gateway_port(given: int | None) -> int:
    """The gateway's port: ``--port``, else ``PROMPTGEN_PORT`` as the gateway reads it (either
    spelling, or its ``_FILE`` form; both set: a ``ValueError``), else 9000."""
    if given is not None:
        return given
    value = variable("PROMPTGEN_PORT")
    if value is None:
        return DEFAULT_PORT
    if not (value.isascii() and value.isdigit()) or not 0 < int(value) < 65536:
        raise ValueError(f"PROMPTGEN_PORT is {value!r}: a port is a number from 1 to 65535")
    return int(value)


def _ops_urls(children: list[Child]) -> str:
    """Where each worker process serves /metrics (and /livez, /readyz), as it announced."""
    host = variable("PROMPTGEN_HTTP_HOST") or "127.0.0.1"
    return ", ".join(f"{c.name} http://{host}:{c.announced.get('http_port')}/metrics" for c in children)


def _said_ready_and(child: Child, check: ReadyCheck) -> ReadyCheck:
    """Ready once ``child`` said so (its ``service_ready`` line, read) and ``check`` passes."""
    async def ready() -> bool:
        return bool(child.announced) and await check()
    return ready


def _service(name: str) -> list[str]:
    return [sys.executable, "-m", "services.cli", name]


def own_service_name(role: str) -> dict[str, str]:
    """``OTEL_SERVICE_NAME`` for one child: the name given to ``up``, with the child's role
    after it (``shop-gateway``), so traces tell the services apart; nothing if none was given
    (each then names itself ``promptgen-<role>``)."""
    given = os.environ.get("OTEL_SERVICE_NAME", "").strip()
    return {"OTEL_SERVICE_NAME": f"{given}-{role}"} if given else {}


def ops_port(name: str, default: int) -> dict[str, str]:
    """A service's ``/metrics`` port: as the environment sets it, else its default, else (another
    deployment on this machine holds it) a free one, announced when the service is ready."""
    if variable(name) or not embedded.port_in_use(default):
        return {}
    return {name: "0"}


def set_port(name: str) -> int | None:
    """The port the environment sets in ``name``, if it is one (0 and what is no number: none;
    the service's settings refuse what is no number, naming it)."""
    value = (variable(name) or "").strip()
    return int(value) if value.isascii() and value.isdigit() and 0 < int(value) < 65536 else None


LOCK_FILE = "promptgen-up.lock"


class DataDirInUse(Exception):
    pass


def hold_data_dir(data_dir: Path) -> IO[str]:
    """The data directory, held by this ``up`` alone for as long as the file returned is open,
    here or in a process that inherited it (an advisory lock, which the system releases with the
    last of them however they end: ``up`` hands it to the servers it starts, so it is held until
    they have stopped too). A second ``up`` on it would start a NATS server on the first one's
    JetStream store, and rewrite the NATS configuration the first one restarts its server from."""
    try:
        held = (data_dir / LOCK_FILE).open("a+")
    except OSError as exc:
        raise DataDirInUse(f"The data directory {data_dir} cannot be used: {exc.strerror or exc}") from None
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # held: EWOULDBLOCK
        held.seek(0)
        holder = held.read().strip()
        held.close()
        if holder.isdigit() and not _alive(int(holder)):
            raise DataDirInUse(f"The data directory {data_dir} is in use by the servers that a promptgen up "
                               f"(process {holder}, which has ended) started: they are stopping; try again in "
                               "a few seconds") from None
        raise DataDirInUse(f"The data directory {data_dir} is in use by another promptgen up"
                           f"{f' (process {holder})' if holder.isdigit() else ''}: stop it, or choose "
                           "another directory with --data-dir") from None
    except OSError as exc:  # no locks there (a network file system without them, say)
        held.close()
        raise DataDirInUse(f"The data directory {data_dir} cannot be locked ({exc.strerror or exc}): "
                           "choose a directory on a local disk with --data-dir") from None
    held.seek(0)
    held.truncate()
    held.write(str(os.getpid()))
    held.flush()
    return held


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's: alive
        return True
    return True


async def run_up(*, port: int, data_dir: Path, nats_port: int, mongo_port: int, generators: int,
                 gateways: int = 1) -> int:
    """``data_dir``: absolute, and it exists."""
    if gateways > 1 and sys.platform != "linux":  # elsewhere SO_REUSEPORT does not spread connections
        console.print("[red]--gateways above 1 needs Linux[/red]: run one gateway, or several behind a load balancer")
        return 2
    if gateways > (most := max_gateways()):
        console.print(f"[red]--gateways {gateways} is more than this machine can use[/red]: at most {most}, "
                      f"two per core ({most // 2} here); a gateway more only shares a core")
        return 2
    try:
        nats_url, mongo_url = variable("NATS_URL"), variable("MONGO_URL")  # or their _FILE forms
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    held = None
    if not (nats_url and mongo_url):  # only the embedded servers keep their data there
        try:
            held = hold_data_dir(data_dir)
        except DataDirInUse as exc:
            console.print(f"[red]{exc}[/red]")
            return 2
    try:
        return await _run_up(port=port, data_dir=data_dir, nats_port=nats_port, mongo_port=mongo_port,
                             generators=generators, gateways=gateways, lock=held.fileno() if held else None,
                             nats_url=nats_url, mongo_url=mongo_url)
    finally:
        if held is not None:
            held.close()  # the lock goes with it


async def _run_up(*, port: int, data_dir: Path, nats_port: int, mongo_port: int, generators: int,
                  gateways: int, lock: int | None, nats_url: str | None, mongo_url: str | None) -> int:
    """``nats_url``, ``mongo_url``: the servers given (None: started here)."""
    stop = stop_event()
    # the data directory stays held while any runs (None: no embedded server, nothing kept there)
    sup = Supervisor(told_to_stop=stop, keep_fds=(lock,) if lock is not None else ())
    env: dict[str, str] = {"PROMPTGEN_PORT": str(port)}
    try:
        for needed, p, what in ((not nats_url, nats_port, "NATS"), (not mongo_url, mongo_port, "MongoDB"),
                                (True, port, "the gateway")):
            if needed and embedded.port_in_use(p):
                console.print(f"[red]Port {p} (for {what}) is already in use.[/red] Choose another with the "
                              f"options of `promptgen up --help`, or stop what uses it.")
                return 2
        for name, what in (("PROMPTGEN_PROJECTOR_HTTP_PORT", "the projector's metrics and health"),
                           *([("PROMPTGEN_GENERATOR_HTTP_PORT", "the generator's metrics and health")]
                             if generators == 1 else [])):  # several generators take free ports
            given = set_port(name)
            if given and embedded.port_in_use(given):  # its service would fail to bind, again at each restart
                console.print(f"[red]Port {given} (for {what}, {name}) is already in use.[/red] Set another, "
                              f"or 0 for a free one, or unset it.", highlight=False)
                return 2
        for given, what, option in ((nats_url, "NATS_URL", "--nats-port"), (mongo_url, "MONGO_URL", "--mongo-port")):
            if given:  # said, or a wrong variable left in the shell is a wait on a server that never comes
                console.print(f"{what} is set: using {redact(given)}, starting none here ({option} is not used)",
                              highlight=False, soft_wrap=True)
        if not nats_url:
            conf = embedded.nats_config(data_dir / "nats", nats_port)
            await sup.start(Child("nats", embedded.nats_argv(conf), server_env(),
                                  ready_check=lambda: tcp_ready(nats_port),
                                  hide=lambda line: "[INF]" in line))  # its banner; warnings still show
            nats_url = env["NATS_URL"] = embedded.nats_url(nats_port)
        if not mongo_url:
            (data_dir / "mongo").mkdir(exist_ok=True)
            await sup.start(Child("mongodb", embedded.mongo_argv(str(data_dir / "mongo"), mongo_port),
                                  server_env(), ready_check=lambda: tcp_ready(mongo_port)))
            mongo_url = env["MONGO_URL"] = embedded.mongo_url(mongo_port)
        projector = Child("projector", _service("projector"),
                          child_env(drop=LLM_SECRETS + GATEWAY_SECRETS, **env,
                                    **own_service_name("projector"), **ops_port("PROMPTGEN_PROJECTOR_HTTP_PORT", 9102)),
                          ours=True)
        await sup.start(projector)
        workers = []
        for i in range(generators):
            # several generators cannot share one port: each takes a free one, announced when ready
            own = ({"PROMPTGEN_GENERATOR_HTTP_PORT": "0"} if generators > 1
                   else ops_port("PROMPTGEN_GENERATOR_HTTP_PORT", 9101))
            workers.append(Child(numbered("generator", i, generators), _service("generator"),
                                 child_env(drop=GATEWAY_SECRETS, **env, **own,
                                           **own_service_name("generator")),
                                 ours=True))
            await sup.start(workers[-1])
        gateway_url = f"http://127.0.0.1:{port}"
        # Several share the port (SO_REUSEPORT, each its own live feed); each then has a free port of
        # its own for /metrics and the probes, since a scrape of the shared one reaches any of them.
        shared = {"PROMPTGEN_REUSE_PORT": "1", "PROMPTGEN_GATEWAY_HTTP_PORT": "0"} if gateways > 1 else {}
        fronts = []
        for i in range(gateways):
            front = Child(numbered("gateway", i, gateways), _service("gateway"),
                          child_env(**env, **shared, **own_service_name("gateway")), ours=True)
            # The first, alone on the port, answers there; the others join a port that answers and
            # say they are ready (and where their own port is) as they start to serve.
            if i == 0:
                front.ready_check = _said_ready_and(front, http_ready(f"{gateway_url}/healthz"))
            fronts.append(front)
            await sup.start(front)
        metrics = f"{gateway_url}/metrics"
        if gateways > 1:
            metrics = f"{_ops_urls(fronts)} (a scrape of {metrics} reaches any one of them)"
        elif fronts[0].announced.get("http_port"):  # its own port too, as the user set it
            metrics += f", {_ops_urls(fronts)}"
        console.print(
            f"\n[bold green]promptgen is up[/bold green]\n"
            f"  gateway  {gateway_url}   (web UI at /, API docs at /docs)\n"
            f"  NATS     {redact(nats_url)}\n"
            f"  MongoDB  {redact(mongo_url)}\n"
            f"  metrics  {metrics}, {_ops_urls([projector, *workers])}\n"
            f"  data     {data_dir if lock is not None else 'none here (NATS and MongoDB are elsewhere)'}\n"
            f"Press Ctrl-C to stop.\n",
            highlight=False,
        )
        stopped, refused = asyncio.ensure_future(stop.wait()), asyncio.ensure_future(sup.refused.wait())
        await asyncio.wait([stopped, refused], return_when=asyncio.FIRST_COMPLETED)
        for waiting in (stopped, refused):
            waiting.cancel()
        if sup.refused.is_set() and not stop.is_set():
            console.print("[red]promptgen up stopped:[/red] a service refused its configuration (see above)")
            return 2
        return 0
    except StartStopped as exc:
        console.print(f"promptgen up stopped: {exc}")
        return 0
    except Exception as exc:  # noqa: BLE001 - report, stop what started, exit non-zero
        console.print(f"[red]promptgen up failed:[/red] {redact(str(exc))}")
        return 2 if isinstance(exc, ChildRefused) else 1
    finally:
        await sup.stop()
