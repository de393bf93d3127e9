"""`promptgen rebuild`: ask the running projector to rebuild, or rebuild alone."""

from __future__ import annotations

import json

from nats.errors import NoRespondersError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from services.adapters.event_log import EventLog
from services.projector.bootstrap import bootstrap
from services.projector.presence import AnotherProjector, Identity, claim
from services.projector.rebuild import SILENCE_SECONDS, SWITCHING, WRITING
from services.runtime.settings import Settings

console = Console(stderr=True)


async def run_rebuild(settings: Settings) -> int:
    event_log = await EventLog.for_tool(settings, "promptgen-rebuild")
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as bar:
            task = bar.add_task("rebuilding read models", total=None)

            async def progress(done: int, total: int, *, stage: str = WRITING) -> None:
                description = "switching to the rebuilt read models" if stage == SWITCHING else "rebuilding read models"
                bar.update(task, completed=done, total=total, description=description)

            try:
                final = await _remote(event_log, progress)
                where = "by the running projector"
            except NoRespondersError:
                final = await _local(settings, event_log, progress)
                where = "here (no projector was running)"
    finally:
        await event_log.close()
    if "error" in final or "position" not in final:
        console.print(f"[red]rebuild failed:[/red] {final.get('error') or 'no reason given'}")
        return 1
    console.print(f"[green]Read models rebuilt {where}[/green] up to event {final['position']}.")
    return 0


async def _remote(event_log: EventLog, progress) -> dict:
    """Ask the running projector; its answer, progress and end all come to our inbox."""
    from services.projector.rebuild import CONTROL_SUBJECT

    nc = event_log.nc
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        await nc.publish(CONTROL_SUBJECT, b"{}", reply=inbox)
        answer = await sub.next_msg(timeout=5)
        if answer.headers and answer.headers.get("Status") == "503":  # what NATS says when nobody listens
            raise NoRespondersError
        answer = json.loads(answer.data)
        if not answer.get("accepted"):
            return {"error": answer.get("error", "refused")}
        while True:
            try:
                update = json.loads((await sub.next_msg(timeout=SILENCE_SECONDS)).data)
            except TimeoutError:
                return {"error": f"the projector has said nothing for {SILENCE_SECONDS:g} s: it stopped during the "
                                 "rebuild (killed, or its connection to NATS lost). Once it runs again, ask for the "
                                 "rebuild again"}
            if update.get("finished"):
                return update
            if "done" in update:  # else the projector's heartbeat
                await progress(update["done"], update["total"], stage=update.get("stage", WRITING))
    finally:
        await sub.unsubscribe()


async def _local(settings: Settings, event_log: EventLog, progress) -> dict:
    try:  # a projector starting meanwhile waits for us
        stop_answering = await claim(event_log, Identity(role="rebuild"))
    except AnotherProjector as exc:  # one started since we asked, or another rebuild runs alone
        return {"error": str(exc)}
    try:
        # the stream as the deployment set it: this shell's retention may not be the deployment's
        service = await bootstrap(settings, event_log=event_log, presence=False, ensure_stream=False)
        try:
            return {"position": await service.fold.rebuild(progress)}
        finally:
            await service.aclose()
    finally:
        await stop_answering()

