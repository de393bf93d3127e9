"""`promptgen probe`: can this service, where it runs, reach what it needs?

The container health checks and Kubernetes probes of the generator and the projector,
which serve no HTTP: it connects to NATS (every seed of ``NATS_URL``) and asks JetStream
for the account's state, and/or pings MongoDB, each within ``timeout`` seconds. It shows
that the process's image, configuration and network work; it does not show that the
running service is making progress (a service whose consumer loop dies exits, and is
restarted by its supervisor).
"""

from __future__ import annotations

import asyncio

from pymongo import AsyncMongoClient

from services.adapters.event_log import NatsAccess, connect_nats, nats_refused
from services.runtime.redaction import redact
from services.runtime.settings import Settings


def _reason(exc: BaseException) -> str:
    return redact(f"{exc.__class__.__name__}: {exc}") if str(exc) else exc.__class__.__name__


async def _nats_problem(settings: Settings, timeout: float) -> str | None:
    try:
        nc = await asyncio.wait_for(connect_nats(settings.nats_url, "promptgen-probe", connect_timeout=timeout,
                                                 access=NatsAccess.from_settings(settings)), timeout)
    except Exception as exc:  # noqa: BLE001 - any failure is the answer; a refusal said as one
        why = await nats_refused(settings.nats_url) or _reason(exc)
        return f"NATS unreachable at {redact(settings.nats_url)}: {why}"
    try:
        await nc.jetstream(timeout=timeout).account_info()
    except Exception as exc:  # noqa: BLE001
        return f"JetStream not available: {_reason(exc)}"
    finally:
        await nc.close()
    return None


async def _mongo_problem(settings: Settings, timeout: float) -> str | None:
    client = AsyncMongoClient(settings.mongo_url, serverSelectionTimeoutMS=int(timeout * 1000),
                              connectTimeoutMS=int(timeout * 1000), appname="promptgen-probe")
    try:
        await client.admin.command("ping")
    except Exception as exc:  # noqa: BLE001
        return f"MongoDB unreachable: {_reason(exc)}"
    finally:
        await client.close()
    return None


async def problems(settings: Settings, *, nats: bool, mongo: bool, timeout: float) -> list[str]:
    """What is wrong, one line each; empty when every asked-for dependency answers."""
    checks = ([_nats_problem(settings, timeout)] if nats else []) + (
        [_mongo_problem(settings, timeout)] if mongo else [])
    return [p for p in await asyncio.gather(*checks) if p]
