"""A position stored for one event log is never read against another.

The fold's checkpoint and the job manager's position are stream sequences. If the stream
was deleted and created again (its sequences start again at 1), or lost events its
readers had already applied, those numbers point into a log they were not taken in:
following from them would skip the new log's first events without a word (nats-py's
ordered consumer even moves itself onto a recreated stream, at the old position).

So each position is stored with the log it belongs to (:attr:`LogState.log_id`), and
before reading from it, and before applying each batch, a consumer compares the two.
On a mismatch it applies nothing, says so at error level with the fix, and waits: the
projector answers ``/readyz`` with 503 until ``promptgen rebuild`` has folded the log
as it is now (and started the job manager at its beginning).
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from services.adapters.event_log import LogState
from services.adapters.ports import ReadModelsPort
from services.adapters.read_models import Mark

log = structlog.get_logger()

FIX = "run `promptgen rebuild` to fold the event log as it is now (it replaces the read models)"


def reset_reason(mark: Mark, state: LogState) -> str | None:
    """Why ``mark`` cannot be followed in the log ``state`` describes, or None if it can.

    A position of another log (the stream was recreated) or past the log's last event (the
    log lost events, or was recreated with fewer) cannot. A position that names no log
    (none stored yet, or stored before logs were told apart) is judged by its sequence."""
    if mark.log_id is not None and state.log_id is not None and mark.log_id != state.log_id:
        return (f"the position {mark.seq} was taken in the log {mark.log_id}, but the log is now "
                f"{state.log_id} (the stream was deleted and created again)")
    if mark.seq > state.last_seq:
        return (f"the position {mark.seq} is past the log's last event {state.last_seq} "
                f"(the stream lost events, or was created again)")
    return None


class ResetWatch:
    """One consumer's view of whether its log was reset under it: logs each new finding
    once, and is what readiness asks."""

    def __init__(self, consumer: str) -> None:
        self.consumer = consumer
        self.reason: str | None = None
        self._changed = asyncio.Event()

    def holds(self, mark: Mark, state: LogState) -> bool:
        """Whether ``mark`` can be followed in ``state``'s log; says so when that changes."""
        reason = reset_reason(mark, state)
        if reason is not None and reason != self.reason:
            log.error("event_log_reset", consumer=self.consumer, reason=reason, fix=FIX,
                      position=mark.seq, position_log=mark.log_id, log=state.log_id, last_seq=state.last_seq)
        elif reason is None and self.reason is not None:
            log.info("event_log_reset_resolved", consumer=self.consumer, log=state.log_id)
        self.reason = reason
        return reason is None

    def wake(self) -> None:
        """A rebuild may have settled it: look again now."""
        self._changed.set()

    async def pause(self, stop: asyncio.Event, seconds: float = 5.0) -> None:
        """Wait before looking again: ``seconds``, a :meth:`wake`, or ``stop``."""
        self._changed.clear()
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._changed.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiting


async def restart_positions(models: ReadModelsPort, state: LogState) -> list[str]:
    """After a rebuild: start every consumer whose position belongs to another log (or is
    past this one's end) at the beginning of this log. Returns their names."""
    moved = []
    for consumer, mark in (await models.positions()).items():
        if reset_reason(mark, state) is not None:
            await models.reset_position(consumer, state.log_id)
            log.warning("position_restarted", consumer=consumer, was=mark.seq, was_log=mark.log_id, log=state.log_id)
            moved.append(consumer)
    return moved
