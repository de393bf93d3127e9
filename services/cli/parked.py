"""`promptgen parked list|reapply|discard`: the events consumers set aside, applying them again,
and dropping those that never will be."""

from __future__ import annotations

import getpass
import socket
import sys

from rich.console import Console
from rich.table import Table

from services.adapters.event_log import EventLog
from services.adapters.parked import (
    PARKING_CONSUMERS,
    ConsumerSlow,
    NoConsumerRunning,
    ParkedEvents,
    ReapplyFailed,
    ReapplyRunning,
    request_reapply,
)
from services.runtime.settings import Settings

err = Console(stderr=True)


async def list_parked(settings: Settings, consumer: str | None, *, as_json: bool) -> int:
    event_log = await EventLog.for_tool(settings, "promptgen-parked")
    try:
        records = await ParkedEvents(event_log).list(consumer)
    finally:
        await event_log.close()
    if as_json:
        for r in records:
            sys.stdout.write(r.model_dump_json() + "\n")
        return 0
    if not records:
        err.print("[green]No parked events.[/green]")
        return 0
    table = Table(title=f"{len(records)} parked event(s)")
    for col in ("consumer", "seq", "subject", "kind", "error", "parked at"):
        table.add_column(col, overflow="fold")
    for r in records:
        when = r.parked_at.strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(r.consumer, str(r.seq), r.subject, r.error_kind, r.error, when)
    Console().print(table)
    return 0


def _unknown(consumer: str) -> bool:
    """Whether no consumer that parks is called ``consumer`` (said, with their names)."""
    if consumer in PARKING_CONSUMERS:
        return False
    err.print(f"[red]No consumer is called {consumer!r}[/red]: it is one of {', '.join(PARKING_CONSUMERS)} "
              "(`promptgen parked list` shows whose events are parked)")
    return True


async def reapply_parked(settings: Settings, consumer: str, seqs: list[int] | None) -> int:
    if _unknown(consumer):
        return 2
    event_log = await EventLog.for_tool(settings, "promptgen-parked")
    try:
        result = await request_reapply(event_log, consumer, seqs)
    except NoConsumerRunning as exc:
        err.print(f"[red]{exc}[/red]: start it (`promptgen up`, or `promptgen {PARKING_CONSUMERS[consumer]}`), "
                  "then try again")
        return 1
    except (ConsumerSlow, ReapplyFailed, ReapplyRunning) as exc:
        err.print(f"[yellow]{exc}[/yellow]")
        return 1
    finally:
        await event_log.close()
    err.print(f"[green]re-applied {len(result.reapplied)}[/green] {result.reapplied or ''}")
    for r in result.still_parked:
        err.print(f"[red]still parked[/red] {r.consumer} {r.seq} {r.subject}: {r.error}")
    if result.not_parked:
        err.print(f"[yellow]not parked[/yellow] by {consumer}: {result.not_parked} "
                  "(`promptgen parked list` shows what is)")
    return 0 if not result.still_parked and not result.not_parked else 1


async def discard_parked(settings: Settings, consumer: str, seqs: list[int], reason: str | None) -> int:
    if _unknown(consumer):
        return 2
    event_log = await EventLog.for_tool(settings, "promptgen-parked")
    try:
        who = f"promptgen parked discard, {getpass.getuser()}@{socket.gethostname()}"  # the CLI has no key
        result = await ParkedEvents(event_log).discard(consumer, seqs, reason, by=who)
    finally:
        await event_log.close()
    err.print(f"[green]discarded {len(result.discarded)}[/green] {result.discarded or ''} "
              "(the events stay in the log)")
    if result.not_parked:
        err.print(f"[yellow]not parked[/yellow] by {consumer}: {result.not_parked} "
                  "(`promptgen parked list` shows what is)")
        return 1
    return 0
