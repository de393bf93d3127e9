"""Parked events: what a consumer could not use, kept where an operator sees it.

A consumer never stops on one event. An event it cannot decode, or whose effect
cannot be stored, is *parked*: a record (who, where in the log, the error, the first
bytes) goes to the stream ``<STREAM>_PARKED``, a log line at error level says so,
and the consumer moves on. Nothing is dropped: the event itself stays in the log.

Once a fix is deployed, ``promptgen parked reapply`` (or ``POST /admin/parked/reapply``)
asks the running consumer to apply each parked event again; one that succeeds leaves
the parked stream, one that fails again stays with its new error. One that never will
(a test message, a job long given up) is dropped from the list with ``promptgen parked
discard`` (or ``POST /admin/parked/discard``), logged as it goes. One record per
(consumer, event): parking the same event twice keeps the newest record.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime

import structlog
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import api
from nats.js.errors import NotFoundError

from contracts.api import DiscardResult, ParkedEvent, ReapplyResult
from services.adapters.event_log import StoredEvent
from services.adapters.ports import EventLogPort
from services.runtime.failures import brief
from services.runtime.metrics import Metrics

log = structlog.get_logger()

PREVIEW_BYTES = 512
CONTROL = "promptgen_control.{consumer}.reapply"

Reapply = Callable[[ParkedEvent], Awaitable[None]]


def preview(data: bytes) -> str:
    """The first bytes of a message, readable whatever they hold."""
    head = data[:PREVIEW_BYTES].decode("utf-8", errors="backslashreplace")
    return head + (f"… ({len(data)} bytes)" if len(data) > PREVIEW_BYTES else "")


# Every consumer that parks, and the service that runs it (their names are the services' own:
# tests/unit/test_cli_parked.py holds them to those).
PARKING_CONSUMERS = {
    "projector": "projector", "job-manager": "projector", "generator-dispatcher": "generator",
    "generator-workers": "generator", "generator-dead-letters": "generator",
}


class NoConsumerRunning(Exception):
    """No process of that consumer answers: start it, then re-apply."""


class ReapplyRunning(Exception):
    """The consumer is re-applying already (an earlier request, perhaps one that timed out)."""


class ConsumerSlow(Exception):
    """The consumer took the request but did not answer in time: it may still be re-applying."""


class ReapplyFailed(Exception):
    """The consumer took the request and failed before it had an answer (its database away)."""


class ParkedEvents:
    def __init__(self, event_log: EventLogPort, metrics: Metrics | None = None, *,
                 consumers: Iterable[str] = ()) -> None:
        """``consumers``: those of this process that may park, counted from 0 in ``metrics``
        (a counter that first appears at 1 shows no increase, and an alert on it stays quiet)."""
        self.event_log = event_log
        self.metrics = metrics
        for consumer in consumers if metrics is not None else ():
            metrics.parked_events.labels(consumer=consumer)
        self.stream = f"{event_log.stream}_PARKED"
        self._prefix = f"promptgen_parked.{event_log.stream}"
        self._ensured = False

    def _subject(self, consumer: str, seq: int) -> str:
        return f"{self._prefix}.{consumer}.{seq}"

    async def ensure(self) -> None:
        if self._ensured:
            return
        s = self.event_log.settings
        await self.event_log.ensure_stream(api.StreamConfig(
            name=self.stream,
            subjects=[f"{self._prefix}.>"],
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            max_msgs_per_subject=1,  # the newest record of each parked event
            max_age=s.stream_max_age_days * 86400,
            num_replicas=s.replicas,
        ))
        self._ensured = True

    async def park(
        self, consumer: str, stored: StoredEvent, kind: str, error: BaseException | str, *,
        stream: str | None = None,
    ) -> ParkedEvent:
        event = stored.event
        record = ParkedEvent(
            consumer=consumer,
            stream=stream or self.event_log.stream,
            seq=stored.seq,
            subject=stored.subject,
            error_kind=kind,
            error=error if isinstance(error, str) else brief(error),
            first_bytes=preview(stored.data or (event.model_dump_json().encode() if event else b"")),
            job_id=getattr(event, "job_id", None),
            persona_id=getattr(event, "persona_id", None),
            parked_at=datetime.now(UTC),
        )
        # Parked already (a rebuild folds the log again): its record is renewed, and it is not
        # counted again, so an alert on the count fires once per event.
        again = await self._parked(consumer, stored.seq)
        await self._store(record, again=again)
        if self.metrics is not None and not again:
            self.metrics.parked_events.labels(consumer=consumer).inc()
        return record

    async def _parked(self, consumer: str, seq: int) -> bool:
        await self.ensure()
        async for msgs in self.event_log.read_messages(self._subject(consumer, seq), stream=self.stream):
            if msgs:
                return True
        return False

    async def _store(self, record: ParkedEvent, *, again: bool = False) -> None:
        await self.ensure()
        await self.event_log.publish_to(self.stream, self._subject(record.consumer, record.seq),
                                        record.model_dump_json().encode())
        (log.warning if again else log.error)(
            "event_parked_again" if again else "event_parked", consumer=record.consumer, seq=record.seq,
            subject=record.subject, error_kind=record.error_kind, error=record.error,
            first_bytes=record.first_bytes[:200], job_id=record.job_id, persona_id=record.persona_id)

    async def list(self, consumer: str | None = None) -> list[ParkedEvent]:
        records: list[ParkedEvent] = []
        try:
            batches = self.event_log.read_messages(f"{self._prefix}.{consumer or '*'}.*", stream=self.stream)
            async for msgs in batches:
                for m in msgs:
                    try:
                        records.append(ParkedEvent.model_validate_json(m.data))
                    except ValueError as exc:  # another version's record, or a stray publish: the rest still shows
                        log.warning("parked_record_unreadable", subject=m.subject, error=brief(exc),
                                    first_bytes=preview(m.data)[:200])
        except NotFoundError:  # nothing was ever parked
            return []
        return sorted(records, key=lambda r: (r.consumer, r.seq))

    async def remove(self, consumer: str, seq: int) -> None:
        await self.event_log.purge(self.stream, self._subject(consumer, seq))

    async def discard(self, consumer: str, seqs: Iterable[int], reason: str | None = None, *,
                      by: str | None = None) -> DiscardResult:
        """Drop the records of ``seqs`` that ``consumer`` parked, for events that will never be
        applied (the event itself stays in the log). Each one is logged at warning with what it
        was, why and by whom (``by``: the key's id), so the list forgets it but the log does
        not. Needs no consumer running."""
        wanted = set(seqs)
        discarded: list[int] = []
        for record in await self.list(consumer):
            if record.seq not in wanted:
                continue
            await self.remove(consumer, record.seq)
            log.warning("parked_discarded", consumer=consumer, seq=record.seq, subject=record.subject,
                        error_kind=record.error_kind, error=record.error, job_id=record.job_id,
                        persona_id=record.persona_id, reason=reason, by=by)
            discarded.append(record.seq)
        return DiscardResult(consumer=consumer, discarded=discarded, not_parked=sorted(wanted - set(discarded)))

    async def serve(self, consumer: str, reapply: Reapply) -> None:
        """Answer re-apply requests for ``consumer`` (one replica answers each request)."""

        running = asyncio.Lock()  # one re-apply at a time here: asked again after a timeout, none queues behind

        async def on_request(msg) -> None:
            if running.locked():
                await msg.respond(json.dumps({"running": True, "error": (
                    f"a re-apply of the {consumer}'s parked events is already running; `promptgen parked list` "
                    "shows what is left: ask again once it has finished")}).encode())
                return
            async with running:
                try:
                    request = json.loads(msg.data or b"{}")
                    # left out or null: all; a list, even empty, names which (the API refuses [])
                    seqs = set(request["seqs"]) if request.get("seqs") is not None else None
                    result = await self.reapply(consumer, reapply, seqs)
                    answer = result.model_dump_json().encode()
                except Exception as exc:  # noqa: BLE001 - the caller hears why
                    log.error("reapply_failed", consumer=consumer, error=brief(exc))
                    answer = json.dumps({"error": brief(exc)}).encode()
            await msg.respond(answer)

        tasks: set[asyncio.Task] = set()

        async def on_message(msg) -> None:
            task = asyncio.create_task(on_request(msg))  # a long re-apply must not block the subscription
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        await self.event_log.subscribe(CONTROL.format(consumer=consumer), on_message, queue="reapply")

    async def reapply(self, consumer: str, reapply: Reapply, seqs: set[int] | None) -> ReapplyResult:
        done: list[int] = []
        still: list[ParkedEvent] = []
        found: set[int] = set()
        for record in await self.list(consumer):
            if seqs is not None and record.seq not in seqs:
                continue
            found.add(record.seq)
            try:
                await reapply(record)
            except Exception as exc:  # noqa: BLE001 - still parked, with the new error
                record = record.model_copy(update={"error": brief(exc), "parked_at": datetime.now(UTC)})
                await self._store(record)
                still.append(record)
            else:
                await self.remove(consumer, record.seq)
                log.info("event_reapplied", consumer=consumer, seq=record.seq, subject=record.subject)
                done.append(record.seq)
        return ReapplyResult(consumer=consumer, reapplied=done, still_parked=still,
                             not_parked=sorted(seqs - found) if seqs is not None else [])


async def request_reapply(event_log: EventLogPort, consumer: str, seqs: list[int] | None,
                          timeout: float = 120) -> ReapplyResult:
    """Ask the running ``consumer`` to re-apply its parked events (all, or ``seqs``)."""
    try:
        msg = await event_log.request(CONTROL.format(consumer=consumer), json.dumps({"seqs": seqs}).encode(),
                                      timeout=timeout)
    except NoRespondersError as exc:
        raise NoConsumerRunning(f"no {consumer} is running to re-apply its parked events") from exc
    except NatsTimeout as exc:
        raise ConsumerSlow(f"the {consumer} did not answer within {timeout:g} s; it may still be re-applying "
                           "(the parked list shows what is left): ask again once it has") from exc
    answer = json.loads(msg.data)
    if answer.get("running"):
        raise ReapplyRunning(answer["error"])
    if "error" in answer:
        raise ReapplyFailed(f"the {consumer} could not re-apply: {answer['error']}")
    return ReapplyResult.model_validate(answer)
