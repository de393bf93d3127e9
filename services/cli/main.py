"""The `promptgen` command: run the whole system, or one service, or inspect the log."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from services.runtime.settings import Settings

app = typer.Typer(no_args_is_help=True, help=__doc__)  # --install-completion / --show-completion
console = Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"promptgen {version('promptgen')}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Event-sourced system-prompt generation: run the whole system, one service, or inspect the log."""


def run_async(coro) -> object:
    """asyncio.run on uvloop where it is installed: the same code, a faster event loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def run_tool(coro: Coroutine[Any, Any, int]) -> int:
    """A tool's run (replay, rebuild, parked, keys), its exit code; NATS not answering, refusing
    us, or without the event log: the reason on one line, exit 1 (no traceback)."""
    from services.adapters.event_log import NatsRefused, NatsUnreachable, NoEventLog

    try:
        return asyncio.run(coro)
    except (NatsUnreachable, NatsRefused, NoEventLog) as exc:
        Console(stderr=True).print(f"[red]promptgen:[/red] {exc}", highlight=False, soft_wrap=True)
        return 1


def _settings(*, llm: bool = False, **overrides: object) -> Settings:
    """The settings from the environment; a service that calls the LLM also refuses an LLM
    configuration that cannot work, and every command tracing variables it cannot honour. Any
    failure exits 2 with the reason, before any start."""
    from services.adapters.llm.factory import check_llm_config
    from services.runtime.tracing import check as check_tracing

    try:
        settings = Settings(**overrides)
        if llm:
            check_llm_config(settings)
        check_tracing()  # an OTEL_* variable asking for an exporter or protocol we lack, a header file unread
    except ValueError as exc:
        console.print(f"[red]promptgen: configuration error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    return settings


def _warn_of_unknown_settings() -> None:
    """A ``PROMPTGEN_*`` variable no setting reads, in the service's log (its logging set up):
    a misspelling would otherwise be ignored in silence. A warning, not a refusal: a newer
    version's setting may be in a shared environment."""
    import structlog

    from services.runtime.settings import unknown_variables

    for name, close in unknown_variables():
        structlog.get_logger().warning("unknown_setting", variable=name, did_you_mean=close)


def _run_service(name: str, main: Callable[[Settings, asyncio.Event], Awaitable[None]], *, llm: bool) -> None:
    from services.runtime.lifecycle import settle_heap_when_ready, stop_event
    from services.runtime.logs import configure_logging

    settings = _settings(llm=llm)
    configure_logging(name, settings.log_level)
    _warn_of_unknown_settings()
    settle_heap_when_ready()

    async def _main() -> int:
        import structlog

        from services.adapters.event_log import StoppedBeforeConnected
        from services.runtime.lifecycle import ServiceRefused

        try:
            await main(settings, stop_event())
        except StoppedBeforeConnected as exc:
            structlog.get_logger().info("service_stopped", reason=str(exc))
        except ServiceRefused as exc:
            structlog.get_logger().error("service_refused", reason=str(exc))
            return 2
        return 0

    if code := run_async(_main()):
        raise typer.Exit(code)


@app.command()
def up(
    port: int = typer.Option(None, min=1, max=65535, help="Gateway port (default PROMPTGEN_PORT or 9000)."),
    data_dir: Path = typer.Option(Path(".promptgen"), help="Where the embedded NATS and MongoDB keep data."),
    nats_port: int = typer.Option(4222, min=1, max=65535,
                                  help="Port of the embedded nats-server (unless NATS_URL is set)."),
    mongo_port: int = typer.Option(27017, min=1, max=65535,
                                   help="Port of the embedded MongoDB-wire server (unless MONGO_URL is set)."),
    generators: int = typer.Option(1, min=1, help="How many generator processes to run."),
    gateways: int = typer.Option(1, min=1, help="How many gateway processes share the gateway port (SO_REUSEPORT, "
                                                "Linux; for many SSE clients, one per core; at most two per core)."),
) -> None:
    """Start everything on this machine: NATS, MongoDB, projector, generator(s), gateway."""
    from services.cli.up import gateway_port, run_up

    try:
        port = gateway_port(port)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None

    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    code = asyncio.run(run_up(port=port, data_dir=data_dir, nats_port=nats_port, mongo_port=mongo_port,
                              generators=generators, gateways=gateways))
    raise typer.Exit(code)


@app.command()
def gateway(
    host: str = typer.Option(None, help="Bind address (default PROMPTGEN_HOST or 127.0.0.1)."),
    port: int = typer.Option(None, min=0, max=65535, help="Port (default PROMPTGEN_PORT or 9000; 0: a free one)."),
) -> None:
    """Run the gateway alone (HTTP API and SSE)."""
    from services.gateway.allowed_hosts import unconfigured
    from services.gateway.app import GatewayServer, create_app
    from services.gateway.bootstrap import ports_at_odds
    from services.gateway.http_head import server_config
    from services.gateway.sse import server_exiting
    from services.runtime.lifecycle import settle_heap_when_ready, stop_also_when, stop_requested
    from services.runtime.logs import configure_logging

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = _settings(llm=True, **overrides)
    if reason := unconfigured(settings) or ports_at_odds(settings):  # before anything starts, plainly
        console.print(f"[red]promptgen: configuration error:[/red] {reason}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    configure_logging("gateway", settings.log_level)
    _warn_of_unknown_settings()
    settle_heap_when_ready()
    logging.getLogger("uvicorn.error").addFilter(_RefusalSaidOnce())
    application = create_app(settings)
    config = server_config(application, settings, host=settings.host,
                           port=settings.port, log_config=None, access_log=False, log_level="warning",
                           timeout_graceful_shutdown=5)
    # Several gateways on one port, when one event loop is not enough: each binds with SO_REUSEPORT.
    sockets = [_reuse_port_socket(settings.host, settings.port)] if settings.reuse_port else None
    stop_also_when(server_exiting)  # a wait for NATS at start gives up once uvicorn is told to stop
    try:
        GatewayServer(config).run(sockets=sockets)
    except SystemExit:
        if reason := getattr(application.state, "refused", None):  # found at start, with NATS: auth
            console.print(f"[red]promptgen: configuration error:[/red] {reason}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        if stop_requested():  # told to stop before it could start: nothing failed
            raise typer.Exit(0) from None
        raise


class _RefusalSaidOnce(logging.Filter):
    """uvicorn logs a lifespan's failure at start as its whole traceback; a refusal of the
    configuration found there (auth without a key) is said once, in one line, as the exit's reason."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "AuthNotConfigured" not in record.getMessage()


def _reuse_port_socket(host: str, port: int):
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


@app.command()
def generator() -> None:
    """Run one generator (dispatcher + workers) alone."""
    from services.generator.main import run_generator

    _run_service("generator", run_generator, llm=True)


@app.command()
def projector() -> None:
    """Run the projector alone (the only writer of MongoDB)."""
    from services.projector.main import run_projector

    _run_service("projector", run_projector, llm=False)


@app.command()
def probe(
    nats: bool = typer.Option(True, help="Check that NATS JetStream answers."),
    mongo: bool = typer.Option(True, help="Check that MongoDB answers."),
    timeout: float = typer.Option(5.0, help="Seconds allowed for each check."),
) -> None:
    """Health check: exit 0 when NATS JetStream and MongoDB answer from here, else 1 with the reason."""
    from services.cli.probe import problems
    from services.runtime.logs import configure_logging

    configure_logging("probe", "error", stream=sys.stderr)  # the reasons below say it once
    found = asyncio.run(problems(_settings(), nats=nats, mongo=mongo, timeout=timeout))
    for problem in found:
        console.print(f"promptgen probe: {problem}", highlight=False, soft_wrap=True)
    raise typer.Exit(1 if found else 0)


@app.command()
def replay(
    job_id: str = typer.Argument(..., help="The job whose events to show."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line instead of a table."),
) -> None:
    """A job's full event history from the log, in order."""
    from services.cli.replay import show_job_history
    from services.runtime.logs import configure_logging

    settings = _settings()  # a configuration error said before any logging is set up
    configure_logging("replay", "warning", stream=sys.stderr)  # stdout is the history itself
    code = run_tool(show_job_history(settings, job_id, as_json=as_json))
    raise typer.Exit(code)


@app.command("mock-llm")
def mock_llm(
    port: int = typer.Option(8100, help="Port."),
    host: str = typer.Option("127.0.0.1", help="Bind address (0.0.0.0 inside a container)."),
    latency_ms: float = typer.Option(0, help="Answer latency."),
    latency_jitter_ms: float = typer.Option(0, help="Extra random latency, up to this."),
    error_rate: float = typer.Option(0, help="Share of calls answered 500."),
    rate_limit_rate: float = typer.Option(0, help="Share of calls answered 429 with retry-after."),
    retry_after_s: float = typer.Option(1.0, help="The retry-after of those 429s."),
    quota_rate: float = typer.Option(0, help="Share of calls answered 429 insufficient_quota."),
    hang_rate: float = typer.Option(0, help="Share of calls never answered."),
    garbage_rate: float = typer.Option(0, help="Share of calls answered with unusable content."),
    drop_rate: float = typer.Option(0, help="Share of calls whose connection is dropped."),
    seed: int = typer.Option(None, help="Seed for reproducible faults."),
) -> None:
    """An OpenAI-compatible test LLM with latency and faults: point OPENAI_BASE_URL at it."""
    from services.testing.mock_llm import MockLLMConfig, run

    run(MockLLMConfig(latency_ms=latency_ms, latency_jitter_ms=latency_jitter_ms, error_rate=error_rate,
                      rate_limit_rate=rate_limit_rate, rate_limit_retry_after_s=retry_after_s,
                      quota_rate=quota_rate, hang_rate=hang_rate, garbage_rate=garbage_rate,
                      drop_rate=drop_rate, seed=seed), host=host, port=port)


@app.command()
def rebuild() -> None:
    """Rebuild every read model from the event log (folded on local disk) and switch to it."""
    from services.cli.rebuild import run_rebuild
    from services.runtime.logs import configure_logging

    settings = _settings()
    configure_logging("rebuild", "warning", stream=sys.stderr)
    raise typer.Exit(run_tool(run_rebuild(settings)))


@app.command()
def asyncapi(
    check: bool = typer.Option(False, "--check", help="Only say whether contracts/asyncapi.json is up to date."),
) -> None:
    """Write the event log's AsyncAPI 3 document (contracts/asyncapi.json) from the contracts."""
    from services.cli.asyncapi import COMMITTED, current, write

    if check:
        fresh = COMMITTED.exists() and COMMITTED.read_text() == current()
        console.print(f"{COMMITTED} is {'up to date' if fresh else 'out of date: run `promptgen asyncapi`'}")
        raise typer.Exit(0 if fresh else 1)
    console.print(f"wrote {write()}")


@app.command()
def doctor(
    data_dir: Path = typer.Option(Path(".promptgen"), help="Where the embedded NATS and MongoDB keep data."),
) -> None:
    """Check what this configuration needs: NATS with JetStream and enough nodes for the stream's
    replicas, MongoDB, whether the read models belong to the log as it is now, the LLM provider
    and its key, disk space; each failure with its fix."""
    from rich.table import Table

    from services.cli.doctor import diagnose

    findings = asyncio.run(diagnose(_settings(), data_dir))
    table = Table(title="promptgen doctor")
    for column in ("check", "", "detail", "fix"):
        table.add_column(column, overflow="fold")
    for f in findings:
        table.add_row(f.check, "[green]ok[/green]" if f.ok else "[red]FAIL[/red]", f.detail, f.fix)
    Console().print(table)
    raise typer.Exit(0 if all(f.ok for f in findings) else 1)


parked_app = typer.Typer(no_args_is_help=True, help="Events a consumer could not decode or store, kept for you.")
app.add_typer(parked_app, name="parked")


@parked_app.command("list")
def parked_list(
    consumer: str = typer.Option(None, help="Only this consumer's (projector, job-manager, generator-workers, …)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line instead of a table."),
) -> None:
    """Every parked event: who parked it, where it is in the log, and why."""
    from services.cli.parked import list_parked
    from services.runtime.logs import configure_logging

    settings = _settings()
    configure_logging("parked", "warning", stream=sys.stderr)
    raise typer.Exit(run_tool(list_parked(settings, consumer, as_json=as_json)))


@parked_app.command("reapply")
def parked_reapply(
    consumer: str = typer.Argument(..., help="Whose parked events: projector, job-manager, generator-dispatcher, "
                                             "generator-workers or generator-dead-letters."),
    seqs: list[int] = typer.Argument(None, help="Their sequences (default: all of that consumer's)."),
) -> None:
    """Ask the running consumer to apply its parked events again, once a fix is deployed."""
    from services.cli.parked import reapply_parked
    from services.runtime.logs import configure_logging

    settings = _settings()
    configure_logging("parked", "warning", stream=sys.stderr)
    raise typer.Exit(run_tool(reapply_parked(settings, consumer, seqs or None)))


@parked_app.command("discard")
def parked_discard(
    consumer: str = typer.Argument(..., help="Whose parked events: projector, job-manager, generator-dispatcher, "
                                             "generator-workers or generator-dead-letters."),
    seqs: list[int] = typer.Argument(..., help="Their sequences (each one named: there is no 'all')."),
    reason: str = typer.Option(None, help="Why, for the log line that records each one."),
) -> None:
    """Drop parked events that will never be applied from the list (the events stay in the log)."""
    from services.cli.parked import discard_parked
    from services.runtime.logs import configure_logging

    settings = _settings()
    configure_logging("parked", "warning", stream=sys.stderr)
    raise typer.Exit(run_tool(discard_parked(settings, consumer, seqs, reason)))


keys_app = typer.Typer(no_args_is_help=True,
                       help="API keys: who may call the gateway, for which tenant, with which scopes.")
app.add_typer(keys_app, name="keys")


def _quiet() -> None:
    from services.runtime.logs import configure_logging

    configure_logging("keys", "warning", stream=sys.stderr)


@keys_app.command("create")
def keys_create(
    tenant: str = typer.Option(..., help="The tenant the key acts for (letters, digits, '-', '_')."),
    scopes: str = typer.Option(..., help="Comma-separated: jobs:read, jobs:write, scenarios:write, admin (every "
                               "tenant's parked events: an operator's); 'all' is the first three, 'all,admin' "
                               "every one."),
    expires_in: str = typer.Option(None, help="Stop working after this long: 90d, 12h, 30m (default: until revoked)."),
) -> None:
    """A new key, printed once (alone on the last line); only its hash is stored."""
    from services.adapters.api_keys import parse_duration, parse_scopes
    from services.cli.keys import create_key

    try:
        wanted = parse_scopes(scopes)
        lifetime = parse_duration(expires_in) if expires_in is not None else None
    except ValueError as exc:
        console.print(f"[red]promptgen: {exc}[/red]", highlight=False)
        raise typer.Exit(2) from None
    _quiet()
    raise typer.Exit(run_tool(create_key(_settings(), tenant, wanted, expires_in=lifetime)))


@keys_app.command("limits")
def keys_limits(
    tenant: str = typer.Argument(..., help="The tenant, as its keys name it."),
    requests_per_minute: int = typer.Option(None, min=0, help="Writing requests per minute (0: no limit)."),
    jobs_in_flight: int = typer.Option(None, min=0, help="Jobs running at once (0: no limit)."),
    personas_per_day: int = typer.Option(None, min=0, help="Personas in the jobs started per UTC day (0: no limit)."),
    reset: bool = typer.Option(False, "--reset", help="Back to the gateways' settings for every limit."),
) -> None:
    """A tenant's own limits, instead of the settings' (PROMPTGEN_TENANT_*): shown, or set."""
    from services.cli.keys import tenant_limits
    from services.gateway.quotas import LIMITS

    given = {"requests_per_minute": requests_per_minute, "jobs_in_flight": jobs_in_flight,
             "personas_per_day": personas_per_day}
    changes: dict[str, int | None] = {name: None for name in LIMITS} if reset else {}
    changes |= {name: value for name, value in given.items() if value is not None}
    _quiet()
    raise typer.Exit(run_tool(tenant_limits(_settings(), tenant, changes)))


@keys_app.command("list")
def keys_list() -> None:
    """Every key: id, tenant, scopes, when created, expiring (or expired) and revoked, in UTC (never the key)."""
    from services.cli.keys import list_keys

    _quiet()
    raise typer.Exit(run_tool(list_keys(_settings())))


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="The key's id, as `keys list` shows it.")) -> None:
    """Refuse the key from now on, at every gateway (its record stays, for audit)."""
    from services.cli.keys import revoke_key

    _quiet()
    raise typer.Exit(run_tool(revoke_key(_settings(), key_id)))
