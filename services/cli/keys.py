"""`promptgen keys create|list|revoke`: API keys, in the bucket every gateway reads them from."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from rich.console import Console
from rich.table import Table

from services.adapters.api_keys import ApiKeys
from services.adapters.event_log import EventLog
from services.adapters.ports import EventLogPort
from services.runtime.settings import Settings

err = Console(stderr=True)


class Refused(Exception):
    """What the operator asked for cannot be: said in red, exit 2."""


@asynccontextmanager
async def _connected(settings: Settings, event_log: EventLogPort | None) -> AsyncIterator[EventLogPort]:
    """The event log (``event_log``, or a connection of our own, closed after); a ValueError
    raised inside (a bad tenant, scope or value) becomes :class:`Refused`."""
    log = event_log or await EventLog.for_tool(settings, "promptgen-keys", needs_stream=False)
    try:
        yield log
    except ValueError as exc:
        raise Refused(str(exc)) from exc
    finally:
        if event_log is None:
            await log.close()


def _refused(exc: Refused) -> int:
    err.print(f"[red]{exc}[/red]")
    return 2


async def create_key(
    settings: Settings, tenant: str, scopes: list[str], *, expires_in: timedelta | None = None,
    event_log: EventLogPort | None = None,
) -> int:
    try:
        async with _connected(settings, event_log) as log:
            record, key = await (await ApiKeys.open(log)).create(tenant, scopes, expires_in=expires_in)
    except Refused as exc:
        return _refused(exc)
    until = f", until {record.expires_at:%Y-%m-%d %H:%M:%S} UTC" if record.expires_at else ""
    err.print(f"key {record.id} for tenant {record.tenant}, scopes {', '.join(record.scopes)}{until}. It is shown "
              "this once; store it now. A gateway running with auth off turns it on at its next start, and then"
              " needs PROMPTGEN_STREAM_TOKEN_SECRET (or _FILE): the same secret on every gateway.")
    sys.stdout.write(key + "\n")  # alone on the last line: `KEY=$(promptgen keys create … | tail -1)`
    return 0


async def list_keys(settings: Settings, *, event_log: EventLogPort | None = None) -> int:
    async with _connected(settings, event_log) as log:
        records = await (await ApiKeys.open(log)).list()
    table = Table(title=f"{len(records)} API key(s), times in UTC")
    table.add_column("id", no_wrap=True)  # copied into `keys revoke`: one piece
    for col in ("tenant", "scopes", "created", "expires", "revoked"):
        table.add_column(col, overflow="fold")
    now = datetime.now(UTC)
    for r in records:
        expires = _when(r.expires_at) + (" (expired)" if r.expires_at and r.expires_at <= now else "")
        table.add_row(r.id, r.tenant, ",".join(r.scopes), _when(r.created_at), expires, _when(r.revoked_at))
    Console().print(table)
    return 0


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else ""


async def revoke_key(settings: Settings, key_id: str, *, event_log: EventLogPort | None = None) -> int:
    async with _connected(settings, event_log) as log:
        keys = await ApiKeys.open(log)
        before = await keys.get(key_id)
        record = await keys.revoke(key_id)
    if record is None:
        err.print(f"[red]no key {key_id}[/red]")
        return 1
    if before is not None and before.revoked_at is not None:
        err.print(f"key {record.id} (tenant {record.tenant}) was revoked already, at "
                  f"{before.revoked_at:%Y-%m-%d %H:%M:%S} UTC")
        return 0
    err.print(f"key {record.id} (tenant {record.tenant}) revoked; every gateway refuses it from the next request")
    return 0


async def tenant_limits(settings: Settings, tenant: str, changes: dict[str, int | None], *,
                        event_log: EventLogPort | None = None) -> int:
    """Set (or, with no changes, show) a tenant's own limits; prints what the tenant then has."""
    from services.gateway.quotas import BUCKET, LIMITS, OVERRIDES_SECONDS, TenantLimits, set_tenant_limits, tenant_own

    try:
        async with _connected(settings, event_log) as log:
            kv = await log.key_value(BUCKET, history=1, replicas=settings.replicas)
            own = await set_tenant_limits(kv, tenant, changes) if changes else await tenant_own(kv, tenant)
            if not any(r.tenant == tenant for r in await (await ApiKeys.open(log)).list()):
                err.print(f"[yellow]no key of tenant {tenant!r} exists (yet): check its name[/yellow]")
    except Refused as exc:
        return _refused(exc)
    defaults = TenantLimits.from_settings(settings)
    table = Table(title=f"tenant {tenant}: limits at every gateway within {OVERRIDES_SECONDS:g} s")
    for col in ("limit", "value", "from"):
        table.add_column(col)
    for name in LIMITS:
        value = own.get(name, getattr(defaults, name))
        table.add_row(name, "no limit" if value == 0 else str(value),
                      "this tenant" if name in own else "the gateways' settings (as this shell has them)")
    Console().print(table)
    return 0
