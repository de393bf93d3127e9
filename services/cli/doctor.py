"""`promptgen doctor`: is everything this configuration needs there, and if not, what to do."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import nats
from nats.js.errors import NotFoundError
from pymongo import AsyncMongoClient

from services.adapters.event_log import (
    WHY_MIN_NATS_VERSION,
    LogState,
    NatsAccess,
    nats_refused,
    nats_seeds,
    version_short_of,
)
from services.adapters.llm.base import LLMError
from services.adapters.llm.factory import build_provider
from services.adapters.read_models import STATE, ReadModels
from services.projector.fold import PROJECTOR
from services.projector.log_reset import FIX, reset_reason
from services.runtime.redaction import redact
from services.runtime.settings import Settings

MIN_FREE_BYTES = 1 << 30


@dataclass
class Finding:
    check: str
    ok: bool
    detail: str
    fix: str = ""


Check = Callable[[Settings, Path], Awaitable[list[Finding]]]


async def _quiet(exc: Exception) -> None:
    """The client would print each failed attempt: the finding says it once."""


async def _nats(settings: Settings):
    return await asyncio.wait_for(nats.connect(
        servers=nats_seeds(settings.nats_url), connect_timeout=2,
        max_reconnect_attempts=0, allow_reconnect=False, error_cb=_quiet,
        **NatsAccess.from_settings(settings).options()), timeout=5)


async def check_nats(settings: Settings, data_dir: Path) -> list[Finding]:
    try:
        nc = await _nats(settings)
    except (Exception, TimeoutError) as exc:  # noqa: BLE001 - reported, with the fix
        if refused := await nats_refused(settings.nats_url):  # said so, not as a time-out
            why = f"cannot connect: {refused}"
        else:
            why = "no answer within 5 s" if isinstance(exc, TimeoutError) else f"{exc.__class__.__name__}: {exc}"
        return [Finding("NATS", False, redact(f"{settings.nats_url}: {why}"),
                        "start NATS (`promptgen up` starts one) or set NATS_URL to a reachable server; "
                        "a locked server needs NATS_USER, NATS_PASSWORD and NATS_TLS_CA_FILE")]
    try:
        # host:port only: a URL's user and password stay out of the report
        where = nc.connected_url.netloc.rpartition("@")[2] if nc.connected_url else redact(settings.nats_url)
        findings = [Finding("NATS", True, where + (f" as {settings.nats_user}" if settings.nats_user else ""))]
        if (short := version_short_of(nc)) is not None:
            version, needs = short
            findings.append(Finding("NATS version", False, f"{version} (promptgen needs {needs} or later)",
                                    f"upgrade nats-server: {WHY_MIN_NATS_VERSION}"))
        js = nc.jetstream(timeout=3)
        try:
            info = await js.account_info()
        except Exception as exc:  # noqa: BLE001
            return findings + [Finding("JetStream", False, f"not available: {exc}",
                                       "start nats-server with JetStream (-js, or a jetstream block)")]
        findings.append(Finding("JetStream", True, f"{info.streams} streams, {info.storage} bytes stored"))
        findings.append(await _replicas(js, nc, settings))
        return findings
    finally:
        await nc.close()


async def _replicas(js, nc, settings: Settings) -> Finding:
    wanted = settings.replicas
    try:
        stream = await js.stream_info(settings.stream)
    except NotFoundError:
        servers = len({u.netloc for u in nc.servers})
        ok = servers >= wanted
        return Finding("replicas", ok, f"stream {settings.stream} not created yet; {servers} server(s) known, "
                       f"PROMPTGEN_STREAM_REPLICAS={settings.stream_replicas or 'unset (1)'}",
                       "" if ok else f"run a NATS cluster of at least {wanted} nodes, "
                                     "or lower PROMPTGEN_STREAM_REPLICAS")
    have = stream.config.num_replicas or 1
    if settings.stream_replicas is None:  # unset: the stream keeps what it has
        wanted = have
    cluster = stream.cluster
    peers = 1 + len(cluster.replicas or []) if cluster else 1
    ok = have == wanted and peers >= wanted
    return Finding("replicas", ok, f"stream {settings.stream}: {have} replica(s) configured, {peers} peer(s); "
                   f"PROMPTGEN_STREAM_REPLICAS={settings.stream_replicas or 'unset (the stream keeps its own)'}",
                   "" if ok else "start a service with the intended PROMPTGEN_STREAM_REPLICAS (it updates the stream) "
                                 "on a cluster with that many nodes")


async def check_mongo(settings: Settings, data_dir: Path) -> list[Finding]:
    client: AsyncMongoClient = AsyncMongoClient(settings.mongo_url, serverSelectionTimeoutMS=3000)
    try:
        info = await client.server_info()
        hello = await client.admin.command("hello")
        await client[settings.mongo_db][STATE].find_one({}, {"_id": 1})  # a server can answer, yet not read
    except Exception as exc:  # noqa: BLE001 - reported, with the fix
        why = redact(str(exc).split(" (configured")[0][:200])
        return [Finding("MongoDB", False, f"{exc.__class__.__name__}: {why}",
                        "start MongoDB (`promptgen up` starts a MongoDB-wire server) or set MONGO_URL")]
    finally:
        await client.close()
    replica = hello.get("setName")
    return [Finding("MongoDB", True, f"version {info.get('version')}, "
                    f"{'replica set ' + replica if replica else 'standalone (no replica set)'}, "
                    f"database {settings.mongo_db}")]


async def check_llm(settings: Settings, data_dir: Path) -> list[Finding]:
    try:
        provider = build_provider(settings)
    except Exception as exc:  # noqa: BLE001 - reported, with the fix
        return [Finding("LLM", False, str(exc), "set PROMPTGEN_PROVIDER to openai or offline")]
    try:
        if provider.name == "offline":
            return [Finding("LLM", True, "offline provider: prompts composed from template and persona, no key needed",
                            "")]
        try:
            await provider.check()
        except LLMError as exc:
            fix = {"llm_auth": "check OPENAI_API_KEY", "llm_unavailable": "check OPENAI_BASE_URL and the network",
                   "llm_timeout": "check OPENAI_BASE_URL and the network"}.get(exc.code, "see the error")
            return [Finding("LLM", False, f"{provider.name} ({provider.model}): {exc.code}: {exc.message[:200]}", fix)]
        return [Finding("LLM", True, f"{provider.name}, model {provider.model}: the key works")]
    finally:
        await provider.aclose()


def _free_bytes(data_dir: Path) -> tuple[str, int]:
    """The free space where the data directory is, or would be (at its nearest existing parent),
    and where that is."""
    where = data_dir.resolve()
    if where.exists():
        return str(where), shutil.disk_usage(where).free
    parent = where.parent
    while not parent.exists():
        parent = parent.parent
    return f"{parent} ({where} does not exist: `promptgen up` makes it)", shutil.disk_usage(parent).free


async def check_disk(settings: Settings, data_dir: Path) -> list[Finding]:
    where, free = _free_bytes(data_dir)
    ok = free >= MIN_FREE_BYTES
    return [Finding("disk", ok, f"{free / (1 << 30):.1f} GiB free at {where}",
                    "" if ok else "free space, or move the data (promptgen up --data-dir)")]


async def check_positions(settings: Settings, data_dir: Path) -> list[Finding]:
    """Whether the read models' checkpoint and the consumers' positions belong to the log as it
    is now (:mod:`services.projector.log_reset`). Nothing to say when NATS, MongoDB or the
    stream is not there: their own checks report it."""
    try:
        nc = await _nats(settings)
    except (Exception, TimeoutError):  # noqa: BLE001 - check_nats reports it
        return []
    client: AsyncMongoClient = AsyncMongoClient(settings.mongo_url, serverSelectionTimeoutMS=3000)
    try:
        models = ReadModels(client[settings.mongo_db])
        marks = {PROJECTOR: await models.checkpoint_mark()} | await models.positions()
        try:
            state = LogState.of(await nc.jetstream(timeout=3).stream_info(settings.stream))
        except NotFoundError:
            return _no_stream(settings, marks[PROJECTOR].seq)
    except Exception:  # noqa: BLE001 - NATS or MongoDB away: reported by the other checks
        return []
    finally:
        await client.close()
        await nc.close()
    reasons = {name: why for name, mark in marks.items() if (why := reset_reason(mark, state))}
    if reasons:
        return [Finding("event log", False, "; ".join(f"{name}: {why}" for name, why in reasons.items()), FIX)]
    at = ", ".join([f"read models at {marks[PROJECTOR].seq}"] +
                   [f"{n} at {m.seq}" for n, m in marks.items() if n != PROJECTOR])
    return [Finding("event log", True, f"{state.log_id}, last event {state.last_seq}; {at}")]


def _no_stream(settings: Settings, folded: int) -> list[Finding]:
    """No stream of the log's name: a deployment that has not started yet, or, with read models
    that folded a log, the wrong NATS or stream name (the services would start a new, empty log)."""
    if folded == 0:
        return [Finding("event log", True, f"stream {settings.stream} not created yet: the first service "
                                           "to start makes it")]
    return [Finding("event log", False, f"NATS has no stream {settings.stream}, but the read models hold a "
                                        f"log's first {folded} events",
                    "point NATS_URL at the deployment's NATS and PROMPTGEN_STREAM at its stream; started "
                    "like this, the services would begin a new, empty log")]


CHECKS: list[Check] = [check_nats, check_mongo, check_positions, check_llm, check_disk]


async def diagnose(settings: Settings, data_dir: Path) -> list[Finding]:
    results = await asyncio.gather(*(check(settings, data_dir) for check in CHECKS))
    return [finding for found in results for finding in found]
