"""`promptgen replay JOB_ID`: a job's audit history as a table or JSON lines, with who gave each command."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from contracts import subjects
from contracts.api import JobEventRecord
from services.adapters.event_log import EventLog
from services.adapters.ports import EventLogPort
from services.gateway.history import job_history
from services.runtime.settings import Settings


def acted_by(record: JobEventRecord) -> str:
    """Who gave a command: ``key K (tenant T)``; empty for the system's own events, and with auth off."""
    return f"key {record.actor} (tenant {record.tenant})" if record.actor else ""


async def show_job_history(
    settings: Settings, job_id: str, *, as_json: bool, event_log: EventLogPort | None = None
) -> int:
    console = Console()
    if not subjects.is_valid_token(job_id):
        Console(stderr=True).print(f"[red]'{job_id}' is not a valid job id[/red]")
        return 2
    log = event_log or await EventLog.for_tool(settings, "promptgen-replay")
    try:
        records = await job_history(log, job_id)
    finally:
        if event_log is None:
            await log.close()
    if not records:
        Console(stderr=True).print(f"[red]No events for job '{job_id}'[/red] (unknown, or aged out of the log)")
        return 1
    if as_json:
        for r in records:
            sys.stdout.write(r.model_dump_json() + "\n")
        return 0
    table = Table(title=f"job {job_id}", show_lines=False)
    for col in ("time", "seq", "event", "persona", "status", "by", "error"):
        table.add_column(col, overflow="fold")
    for r in records:
        table.add_row(r.time.strftime("%H:%M:%S.%f")[:-3], str(r.seq), r.type, r.persona_id or "",
                      r.status or "", acted_by(r), r.error or "")
    console.print(table)
    return 0
