"""The event log adapter: the one place that talks to NATS JetStream.

* :meth:`EventLog.publish` stores an event with its deterministic ``Nats-Msg-Id``
  (a retried publish is a no-op) and returns its stream sequence.
* :meth:`EventLog.read` replays a subject filter from a sequence until caught up;
  :meth:`EventLog.follow` keeps going live. Both use ordered consumers, so they
  need no clean-up on the server beyond unsubscribing.
* :meth:`EventLog.work_queue` binds a durable pull consumer shared by replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import MappingProxyType

import nats
import structlog
from nats.aio.client import Client as NATS
from nats.errors import AuthorizationError, ConnectionClosedError, NoRespondersError, NoServersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import api
from nats.js.errors import BadRequestError, NoStreamResponseError, NotFoundError, ServerError, ServiceUnavailableError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from contracts import subjects
from contracts.events import Envelope, Event, EventDecodeError, UnknownEvent, encode_event, parse_event
from contracts.limits import printable
from services.runtime import tracing
from services.runtime.lifecycle import cancel_and_wait, stop_requested
from services.runtime.redaction import redact
from services.runtime.settings import Settings

log = structlog.get_logger()
STREAM_NAME_IN_USE = 10058  # JetStream: a stream of that name exists with another configuration
# JetStream: "no suitable peers for placement": too few servers to hold the replicas now (one is
# offline, or a cluster just started has not heard from all of them yet).
NO_PEERS_FOR_PLACEMENT = 10005
# JetStream: "error creating store for stream": met once re-creating a stream just deleted (its
# store not gone yet); asked again like a cluster still forming, and raised after the same while.
STORE_NOT_CREATED = 10049
WRONG_LAST_SEQUENCE = 10071  # JetStream: a publish's expected last sequence (on a subject) is not the stream's
# A publish's condition, checked by JetStream as it stores it: the newest message on the subject
# (this publish's own, or the one the second header names) has that sequence (0: there is none).
EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"
UNLESS_TRIES = 5  # a publish unless a subject holds an event, asked again past garbage there


class NoStreamLeader(Exception):
    """A replicated stream without a leader (a NATS node died, the cluster is electing): a
    consumer made now may be served by a replica that has not applied the last events, and
    a read from it would end early."""


# NoStreamResponseError: no server answered a publish for the stream's subjects, as while a
# stream just made on a cluster (or one electing a leader) has none; asked again for
# NO_STREAM_RESPONSE_SECONDS only, since a stream deleted, or no JetStream, looks the same.
_TRANSIENT = (NatsTimeout, NoRespondersError, ServiceUnavailableError, asyncio.TimeoutError, NoStreamLeader,
              NoStreamResponseError)
NO_STREAM_RESPONSE_SECONDS = 10.0


class StreamSilent(Exception):
    """No server answered for the log's stream, asked again for a while: it is gone, or JetStream is."""

    def __init__(self, stream: str, seconds: float) -> None:
        super().__init__(f"no server answered for the stream {stream} within {seconds:g} s")
# What a request meets while NATS (or the stream's leader, or JetStream itself) is down or not
# answering: a 503.
UNAVAILABLE = (NatsTimeout, NoServersError, ConnectionClosedError, ServiceUnavailableError, NoStreamLeader,
               NoStreamResponseError, NoRespondersError, StreamSilent)


class Precluded(Exception):
    """An event not stored because the log already holds one on the subject it was published
    unless: the log decides, as it stores it, so nothing can slip in between a check and the write."""

    def __init__(self, event_type: str, subject: str) -> None:
        super().__init__(f"a {event_type} event is not stored: the log holds an event on {subject}")
        self.subject = subject


@dataclass(frozen=True, slots=True)
class Unless:
    """A publish's condition: not stored once the log holds an event on one of ``precluding``.
    The server checks ``watch``, a filter that covers them (wildcards allowed), against
    ``after``, the newest message on it the publisher knows of (0: none); a message there
    that precludes nothing (garbage, another event of ``watch``'s) is stepped over."""

    watch: str
    precluding: tuple[str, ...]
    after: int = 0


@dataclass(frozen=True, slots=True)
class Unchanged:
    """A publish's condition: the newest message on ``subjects`` (a filter: wildcards allowed) is
    the one at ``seq``, which the publisher decided on (0: none)."""

    subjects: str
    seq: int


class Moved(Exception):
    """An event not stored because a message on its condition's subjects (:class:`Unchanged`)
    came after the one its publisher decided on: decide again on what is there now."""

    def __init__(self, event_type: str, condition: Unchanged) -> None:
        super().__init__(f"a {event_type} event is not stored: {condition.subjects} moved past {condition.seq}")
        self.condition = condition


class Contended(Exception):
    """An event not stored because the subject it was published unless kept changing under it,
    with no event there: what a buggy producer writing garbage faster than the publish was asked
    again does. Nothing precludes it: asked again later, it may be stored."""

    def __init__(self, event_type: str, subject: str, tries: int) -> None:
        super().__init__(f"a {event_type} event is not stored yet: {subject} changed under each of its "
                         f"{tries} tries, with no event there")
        self.subject = subject


class EventTooLarge(ValueError):
    """An event bigger than the NATS server takes in one message (its ``max_payload``): it
    can never be stored, and sending it anyway would cost the connection."""

    def __init__(self, event_type: str, size: int, limit: int) -> None:
        super().__init__(f"a {event_type} event of {size} bytes is over the server's limit of {limit} bytes")
        self.event_type = event_type
        self.size = size
        self.limit = limit


_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as the log holds it: its position, time and subject with it.

    Reading never stops on one message: one that does not decode comes with
    ``event`` None, the ``error`` saying why and its ``data``, for the reader to
    skip (:class:`~contracts.events.UnknownEvent`) or park (anything else).

    ``headers`` are those it was published with: its ``Nats-Msg-Id`` and, when its
    publisher was tracing, the W3C ``traceparent`` / ``tracestate`` its consumers continue."""

    seq: int
    time: datetime
    subject: str
    event: Event | None
    error: EventDecodeError | None = None
    data: bytes = b""
    headers: Mapping[str, str] = field(default_factory=lambda: _NO_HEADERS)

    @property
    def garbage(self) -> bool:
        """Not an event at all: neither one this version reads nor a newer version's."""
        return self.event is None and not isinstance(self.error, UnknownEvent)


# Not about the event: what a direct get adds (the message's place in the stream), and the
# publish's preconditions (nats-py sends Nats-Expected-Stream, which the server stores).
_SERVER_HEADERS = frozenset({"Nats-Stream", "Nats-Subject", "Nats-Sequence", "Nats-Time-Stamp",
                             "Nats-Last-Sequence", "Nats-Num-Pending"})


def published_headers(headers: Mapping[str, str] | None) -> Mapping[str, str]:
    """The headers that say something of the event: its ``Nats-Msg-Id``, its trace context."""
    if not headers:
        return _NO_HEADERS
    return MappingProxyType({k: v for k, v in headers.items()
                             if k not in _SERVER_HEADERS and not k.startswith("Nats-Expected-")})


def on_its_subject(subject: str, data: bytes) -> Event:
    """The event ``data`` holds, if ``subject`` is its own. An event on another subject (a job's
    request on another job's subject) would be read by some consumers for the job its subject
    names and by others for the one it names itself: it is read by none."""
    event = parse_event(data)
    if (own := event.subject()) != subject:
        raise EventDecodeError(f"a {event.type} event published on {printable(subject, 200)}, not on its own "
                               f"subject {own}")
    return event


def stored_event(seq: int, time: datetime | None, subject: str, data: bytes,
                 headers: Mapping[str, str] | None = None) -> StoredEvent:
    time = time or datetime.now(UTC)
    kept = published_headers(headers)
    try:
        return StoredEvent(seq=seq, time=time, subject=subject, event=on_its_subject(subject, data), headers=kept)
    except EventDecodeError as exc:
        return StoredEvent(seq=seq, time=time, subject=subject, event=None, error=exc, data=bytes(data),
                           headers=kept)


def stored_message(msg) -> StoredEvent:
    md = msg.metadata
    return stored_event(md.sequence.stream, md.timestamp, msg.subject, msg.data, msg.headers)


@dataclass(frozen=True, slots=True)
class LogState:
    """Where the log stands, and which incarnation of it this is.

    ``log_id`` names the stream and when it was created (stream info's ``created``): a
    stream deleted and created again is another log, whose sequences start again at 1,
    so a position stored for the old one means nothing in the new one. None when the
    server does not say when the stream was created."""

    log_id: str | None
    first_seq: int
    last_seq: int

    @classmethod
    def of(cls, info: api.StreamInfo) -> LogState:
        """The state a stream's info describes."""
        log_id = f"{info.config.name}@{info.created.isoformat()}" if info.created else None
        return cls(log_id=log_id, first_seq=info.state.first_seq, last_seq=info.state.last_seq)


class PullFailed(Exception):
    """The server answered a pull with a status other than "no more messages"."""


_PULL_DONE = {"404", "408"}  # no messages (now), the request expired: what was there has come
_PULL_PENDING = "Requests Pending"  # with 408: refused, as earlier requests already ask for what is left
PULL_END, PULL_FULL, PULL_COMPLETED = "end", "full", "completed"
PENDING_BYTES = "Nats-Pending-Bytes"  # of a status: what was left of the request's max_bytes
PULL_QUIET_SECONDS = 1.0  # a pull request silent this long is over
# With 409, of a request with max_bytes: its bytes are used up; it brought its whole batch.
_PULL_409 = {"Message Size Exceeds MaxBytes": PULL_FULL, "Batch Completed": PULL_COMPLETED}


def pull_status(msg) -> str | None:
    """What the server's status ``msg`` says of a pull request: None when it is an event,
    :data:`PULL_END` (no more messages now, or the request expired: what was there has come),
    :data:`PULL_FULL` (the request's ``max_bytes`` are used up: ask again),
    :data:`PULL_COMPLETED` (it brought the whole batch asked for, or was refused because earlier
    requests already ask for every event left: nothing to do). Any other status (409: a request
    over the server's limits, the consumer deleted, a leader change) raises :class:`PullFailed`
    with the server's words."""
    status = msg.headers.get("Status") if msg.headers else None
    if status is None:
        return None
    description = msg.headers.get("Description", "")
    if status == "408" and description == _PULL_PENDING:
        return PULL_COMPLETED  # nothing to do: the earlier requests bring those events
    if status in _PULL_DONE:
        return PULL_END
    if status == "409" and description in _PULL_409:
        return _PULL_409[description]
    raise PullFailed(f"the server refused a read of the log: {status} {description}".strip())


class FollowStalled(Exception):
    """A live read whose consumer the server lost: resume from your stored position."""


class _Arrivals:
    """The messages of one push subscription, handed over in batches of whatever has
    already arrived: a task per message (as ``next_msg`` costs) would dominate reading a
    long log. Bounded, so a slow reader holds the subscription back instead of growing."""

    def __init__(self, limit: int = 10_000) -> None:
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=limit)

    async def put(self, msg) -> None:
        await self.queue.put(msg)

    def empty(self) -> bool:
        return self.queue.empty()

    async def take(self, max_batch: int, timeout: float | None) -> list:
        first = await (asyncio.wait_for(self.queue.get(), timeout) if timeout else self.queue.get())
        msgs = [first]
        while len(msgs) < max_batch and not self.queue.empty():
            msgs.append(self.queue.get_nowait())
        return msgs


async def pulled(
    sub, batch: int | Callable[[], Awaitable[int]], stop: asyncio.Event, *, ready: float = 0.01
) -> AsyncIterator[list]:
    """Each non-empty fetch from a pull subscription, until ``stop``: up to ``batch``
    messages, or as many as ``await batch()`` says there is room for (it waits for room).
    A fetch the server cannot answer for now (503 while a leader is elected) is tried again.

    A fetch that waits for messages asks for one: a fetch holds what it has until its batch is
    full or it expires, and a batch can stay short for the whole expiry (the consumer's
    ``max_ack_pending`` lets out fewer, or the log is still being written). Once messages
    come, the next fetches take up to ``batch`` of what is ready within ``ready`` seconds."""
    waiting = True
    while not stop.is_set():
        size = batch if isinstance(batch, int) else await batch()
        try:
            msgs = await (sub.fetch(batch=1, timeout=1) if waiting else sub.fetch(batch=size, timeout=ready))
        except (NatsTimeout, TimeoutError):
            waiting = True
            continue
        except _TRANSIENT as exc:  # the consumer has no leader for a moment (a NATS node died): ask again
            log.warning("fetch_retry", error=f"{type(exc).__name__}: {exc}"[:300])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)
            continue
        waiting = False
        yield msgs


def _not_placed_yet(exc: BaseException) -> bool:
    """A stream or bucket NATS cannot place for want of servers, or whose store it could not make
    yet: asked again, as a server may be back (the cluster formed, the old store gone) a moment later."""
    return ((isinstance(exc, BadRequestError) and exc.err_code == NO_PEERS_FOR_PLACEMENT)
            or (isinstance(exc, ServerError) and exc.err_code == STORE_NOT_CREATED))


@dataclass(frozen=True, slots=True)
class NatsAccess:
    """Who we are to NATS and how we trust it: a user and password, and TLS with the CA
    that signed the servers' certificates (and our own certificate, if servers ask for one).
    Nothing set: an open server, such as the embedded one on loopback."""

    user: str | None = None
    password: str | None = None
    tls: ssl.SSLContext | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> NatsAccess:
        password = settings.nats_password.get_secret_value() if settings.nats_password else None
        return cls(user=settings.nats_user, password=password, tls=_tls_context(settings))

    def options(self) -> dict:
        """nats-py's ``connect`` options for this access (none for an open server).

        A user's reply inboxes are ``_INBOX.<user>.…``, so a locked server lets each user
        subscribe to its own replies only (deploy/nats/permissions.conf)."""
        options: dict = {}
        if self.user:
            options.update(user=self.user, password=self.password)
            if subjects.is_valid_token(self.user):
                options["inbox_prefix"] = f"_INBOX.{self.user}"
        if self.tls is not None:
            options["tls"] = self.tls
        return options


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    if not (settings.nats_tls_ca_file or settings.nats_tls_cert_file):
        return None
    variable = "NATS_TLS_CA_FILE"
    try:
        context = ssl.create_default_context(cafile=settings.nats_tls_ca_file)
        if settings.nats_tls_cert_file:
            variable = "NATS_TLS_CERT_FILE or NATS_TLS_KEY_FILE"
            context.load_cert_chain(settings.nats_tls_cert_file, settings.nats_tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"{variable}: {exc.strerror or exc}") from exc
    return context


def _is_permission_error(exc: Exception) -> bool:
    return "permissions violation" in str(exc).lower()


class StoppedBeforeConnected(Exception):
    """The process was told to stop while it waited for NATS to answer at start: it had taken
    no work, so it simply ends."""


class NatsRefused(ConnectionError):
    """The server will not have us (a wrong user or password, a certificate we cannot trust):
    trying again changes nothing, so the process stops with the reason."""


class NatsUnreachable(ConnectionError):
    """No NATS server answered within the time a command-line tool waits (a service waits on)."""


class NoEventLog(LookupError):
    """NATS answers, but has no stream of the event log: another NATS than the deployment's, or
    another stream name."""


def nats_seeds(url: str) -> list[str]:
    """The servers ``NATS_URL`` names: it may list several seeds, separated by commas."""
    return [seed.strip() for seed in url.split(",") if seed.strip()]


async def nats_refused(nats_url: str) -> str | None:
    """Why no server of ``nats_url`` takes a connection at all (refused, no such host), if none
    does: asked once a connection failed, whose error (a time-out: nats-py, told not to
    reconnect, still tries until then) says less."""
    reasons = []
    for server in nats_seeds(nats_url):
        url = urllib.parse.urlsplit(server if "://" in server else f"nats://{server}")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(url.hostname, url.port or 4222), 2)
        except (OSError, TimeoutError, ValueError) as exc:
            errno = getattr(exc, "errno", None)
            reasons.append(f"{url.hostname}:{url.port or 4222}: " + (os.strerror(errno) if errno else "no answer"))
            continue
        writer.close()
        return None
    return "; ".join(reasons) or None


MIN_NATS_VERSION = (2, 11)  # Nats-Expected-Last-Subject-Sequence-Subject (the outcome's and the end's conditions)
WHY_MIN_NATS_VERSION = ("a persona's outcome is stored only while its job's cancel and end are not, and a job's "
                        "end only while nothing of the job came after what it was decided on: conditions "
                        "(Nats-Expected-Last-Subject-Sequence-Subject) older servers do not check")


def version_short_of(nc: NATS) -> tuple[str, str] | None:
    """The version of the server ``nc`` is connected to and the one promptgen needs, when that
    server is older; None when it will do."""
    version = nc.connected_server_version
    if (version.major, version.minor) >= MIN_NATS_VERSION:
        return None
    return str(version), ".".join(map(str, MIN_NATS_VERSION))
TOOL_WAIT_SECONDS = 10.0  # how long a command-line tool waits for NATS before it says so
NATS_ERROR_EVERY_SECONDS = 30.0  # while NATS stays unreachable, one nats_error line this often


class _Sparse:
    """One log line for a run of failures rather than one per attempt (nats-py tries again
    every 250 ms): the first at once, then at most one each ``seconds``, counting those it
    left out. :meth:`reset` once the failures end."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.quiet_until = 0.0
        self.left_out = 0

    def due(self) -> dict[str, int] | None:
        """The fields of the line to log now (``repeated``: those left out), or None for none."""
        now = time.monotonic()
        if now < self.quiet_until:
            self.left_out += 1
            return None
        fields = self._repeated()
        self.quiet_until = now + self.seconds
        return fields

    def reset(self) -> dict[str, int]:
        """The failures are over: the next is logged at once. The fields for the line that says
        so (``repeated``: failures left out since the last line logged)."""
        self.quiet_until = 0.0
        return self._repeated()

    def _repeated(self) -> dict[str, int]:
        """``repeated``: the failures left out since the last line, counted afresh from here."""
        fields = {"repeated": self.left_out} if self.left_out else {}
        self.left_out = 0
        return fields


async def connect_nats(
    url: str, name: str, *, access: NatsAccess | None = None, connect_timeout: float = 30.0,
    on_reconnect: list | None = None, give_up_after: float | None = None,
) -> NATS:
    """Connect, retrying until ``connect_timeout``; once up, reconnect forever. A refusal
    before the first connection (authorization, TLS verification) raises :class:`NatsRefused`
    at once. With ``give_up_after`` (a tool, which answers a person), no server answering by
    then raises :class:`NatsUnreachable`; without it, a service waits until it is told to stop."""
    access = access or NatsAccess()
    refused: asyncio.Future = asyncio.get_running_loop().create_future()

    closing: list[bool] = []  # set when this process closes the connection itself

    async def _disconnected() -> None:
        if closing:
            log.info("nats_closed")  # our own close, on the way out: no lost connection
        elif connected and connected[0].is_closed:  # the server ended it for good (a revoked user, too many
            log.error("nats_connection_closed", error=repr(connected[0].last_error)[:300])  # connections)
        else:
            log.warning("nats_disconnected")

    connected: list[NATS] = []
    last_error: list[Exception] = []

    errors = _Sparse(NATS_ERROR_EVERY_SECONDS)

    async def _reconnected() -> None:
        log.info("nats_reconnected", **errors.reset())  # with the errors the last nats_error left out
        for callback in on_reconnect or []:
            callback()

    async def _error(exc: Exception) -> None:
        if _is_permission_error(exc):
            # The server refused a publish or a subscription for this user: a deployment's
            # permissions and this code disagree (deploy/nats/permissions.conf).
            log.error("nats_permission_denied", error=str(exc), user=access.user)
            return
        if isinstance(exc, (AuthorizationError, ssl.SSLCertVerificationError)) \
                or "authorization violation" in str(exc).lower():
            log.error("nats_refused", error=str(exc), user=access.user)
            if not refused.done():
                refused.set_result(exc)
            return
        if give_up_after is not None and not connected:
            last_error[:] = [exc]  # a tool still connecting: if none answers in time, its one line says why
            return
        if (fields := errors.due()) is not None:
            log.warning("nats_error", error=str(exc), servers=shown, **fields)

    servers = nats_seeds(url)
    shown = [redact(server) for server in servers]

    async def _connect() -> NATS:
        async for attempt in AsyncRetrying(
            stop=stop_after_delay(connect_timeout),
            wait=wait_exponential_jitter(multiplier=0.05, max=1.0, jitter=0.1),
            retry=retry_if_exception_type((OSError, NoRespondersError, NatsTimeout, asyncio.TimeoutError)),
            reraise=True,
        ):
            with attempt:
                return await nats.connect(
                    servers,
                    name=name,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.25,
                    connect_timeout=2,
                    disconnected_cb=_disconnected,
                    reconnected_cb=_reconnected,
                    error_cb=_error,
                    **access.options(),
                )
        raise AssertionError("unreachable")

    async def _until_stop_requested() -> None:
        while not stop_requested():  # noqa: ASYNC110 - uvicorn's exit is a flag, not an event
            await asyncio.sleep(0.25)

    connecting = asyncio.ensure_future(_connect())
    stopping = asyncio.ensure_future(_until_stop_requested())
    try:
        await asyncio.wait({connecting, refused, stopping}, timeout=give_up_after,
                           return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        # The caller gave up (cancelled, or its own timeout): the attempt must not go on
        # reconnecting for the rest of the process.
        connecting.cancel()
        raise
    finally:
        stopping.cancel()
    if connecting.done():
        nc = connecting.result()
        close = nc.close

        async def close_on_purpose() -> None:
            closing.append(True)
            try:
                await close()
            except (OSError, RuntimeError) as exc:
                # NATS lost: nats-py writes what it still holds to the dead connection as it
                # closes, and fails (ConnectionResetError; uvloop: RuntimeError, "the handler is
                # closed"). Nothing of it could be delivered; the process goes on stopping.
                log.info("nats_closed", unsent=True, error=repr(exc)[:200])

        nc.close = close_on_purpose  # type: ignore[method-assign]
        connected.append(nc)
        errors.reset()
        if (short := version_short_of(nc)) is not None:
            log.error("nats_server_too_old", version=short[0], needs=short[1], why=WHY_MIN_NATS_VERSION)
        return nc
    # nats-py can swallow a cancellation (its asyncio.wait_for): cancelled again until it ends
    await cancel_and_wait(connecting, every=0.25, attempts=40)
    if stop_requested():  # nats-py waits for a server forever: a stop must not
        raise StoppedBeforeConnected(f"told to stop while waiting for NATS at {', '.join(shown)}")
    if not refused.done():  # nobody answered in time (give_up_after)
        why = f" (last: {last_error[0]})" if last_error else ""
        raise NatsUnreachable(f"NATS did not answer at {', '.join(shown)} within {give_up_after:g} s{why}: "
                              "set NATS_URL (or NATS_URL_FILE) to the deployment's NATS")
    who = f"user {access.user!r}" if access.user else "no user"
    raise NatsRefused(f"NATS refused the connection ({who}): {refused.result()}; check NATS_USER, "
                      "NATS_PASSWORD and NATS_TLS_CA_FILE")
    raise AssertionError("unreachable")


class DerivedReads:
    """What every event log derives from its primitives (``last_seq_on``, ``read_batches``,
    ``follow_batches``): written once for the JetStream adapter and its in-memory double."""

    async def _publish_unless(self, event: Envelope, headers: dict[str, str], unless: Unless,
                              store: Callable[[dict[str, str]], Awaitable[int]]) -> int:
        """``event`` stored by ``store`` (the adapter's publish, given its headers) unless an event
        is on one of ``unless.precluding``: its sequence, or :class:`Precluded`. The server checks
        as it stores, before it looks for a duplicate, so nothing slips in between. Refused, it
        looks: the retry of ``event`` stored before, its ack lost, gets that sequence; a message
        on ``unless.watch`` that precludes nothing (a buggy producer's garbage) is stepped over,
        and the publish asked again unless a message follows it; after ``UNLESS_TRIES``
        refusals, :class:`Contended` (a caller's retry later may store it)."""
        newest = unless.after  # the newest message on what the server checks, as far as we know
        for _ in range(UNLESS_TRIES):
            if (seq := await self._store_while(event, headers, Unchanged(unless.watch, newest), store)) is not None:
                return seq
            if (found := await self.first_readable_on(list(unless.precluding), leader=True)) is not None:
                raise Precluded(event.type, found.subject)
            newest = await self.last_seq_on(unless.watch, leader=True) or 0
        raise Contended(event.type, unless.watch, UNLESS_TRIES)  # garbage written there faster than we publish

    async def _publish_unchanged(self, event: Envelope, headers: dict[str, str], condition: Unchanged,
                                 store: Callable[[dict[str, str]], Awaitable[int]]) -> int:
        """``event`` stored by ``store`` if nothing came on ``condition.subjects`` after
        ``condition.seq``, else :class:`Moved`."""
        if (seq := await self._store_while(event, headers, condition, store)) is None:
            raise Moved(event.type, condition)
        return seq

    async def _store_while(self, event: Envelope, headers: dict[str, str], condition: Unchanged,
                           store: Callable[[dict[str, str]], Awaitable[int]]) -> int | None:
        """``event`` stored by ``store`` while the newest message on ``condition.subjects`` is at
        ``condition.seq`` (the server checks as it stores): its sequence, or that of its own
        earlier publish (a retry whose ack was lost); None if refused for another message."""
        try:
            return await store(headers | {EXPECTED_LAST_SUBJECT_SEQUENCE: str(condition.seq),
                                          EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: condition.subjects})
        except BadRequestError as exc:
            if exc.err_code != WRONG_LAST_SEQUENCE:
                raise
        # asked of the stream's leader, which refused: a replica may lag behind it
        mine = await self.last(event.subject(), leader=True)
        if mine is not None and mine.headers.get("Nats-Msg-Id") == headers["Nats-Msg-Id"]:
            return mine.seq
        return None

    async def last_seq_on(self, subject: str, *, leader: bool = False) -> int | None:
        raise NotImplementedError

    def read_batches(self, filter_subject: str, start_seq: int = 1) -> AsyncIterator[list[StoredEvent]]:
        raise NotImplementedError

    def follow_batches(self, filter_subject: str, start_seq: int = 1, max_batch: int = 500, *,
                       wanted: Callable[[str, int], bool] | None = None) -> AsyncIterator[list[StoredEvent]]:
        raise NotImplementedError

    async def last(self, subject: str, *, leader: bool = False) -> StoredEvent | None:
        raise NotImplementedError

    async def first_readable_on(self, subjects_: list[str], *, leader: bool = False) -> StoredEvent | None:
        """The newest event this version can read on the first of ``subjects_`` that holds one,
        or None. What a buggy producer wrote there in garbage is no event: when the newest
        cannot be read, the subject is read from its start for one that can."""
        for subject in subjects_:
            newest = await self.last(subject, leader=leader)
            if newest is None:
                continue
            if not newest.garbage:
                return newest  # a newer version's event is one, if not one this version can show
            log.warning("event_unreadable_on_subject", subject=subject, seq=newest.seq,
                        error=str(newest.error)[:200])
            readable = None
            async with contextlib.aclosing(self.read(subject)) as events:
                async for stored in events:
                    if not stored.garbage:
                        readable = stored
            if readable is not None:
                return readable
        return None

    async def read(self, filter_subject: str, start_seq: int = 1) -> AsyncIterator[StoredEvent]:
        """Every stored event matching ``filter_subject`` from ``start_seq``, then stop."""
        async with contextlib.aclosing(self.read_batches(filter_subject, start_seq)) as batches:
            async for batch in batches:
                for stored in batch:
                    yield stored

    async def follow(self, filter_subject: str, start_seq: int = 1) -> AsyncIterator[StoredEvent]:
        """Every event matching ``filter_subject`` from ``start_seq``, live, until closed."""
        async with contextlib.aclosing(self.follow_batches(filter_subject, start_seq)) as batches:
            async for batch in batches:
                for stored in batch:
                    yield stored


class EventLog(DerivedReads):
    def __init__(self, nc: NATS, settings: Settings, reconnect_callbacks: list | None = None) -> None:
        self.nc = nc
        self._reconnect_callbacks = reconnect_callbacks if reconnect_callbacks is not None else []
        self.js = nc.jetstream(timeout=10)
        self.settings = settings
        self.stream = settings.stream
        self.changes_streams = True  # a service's log; a tool's changes none (:meth:`ensure_stream`)

    @classmethod
    async def connect(cls, settings: Settings, name: str, *, ensure_stream: bool = True) -> EventLog:
        """``ensure_stream`` False: the stream is neither made nor updated (the caller calls
        :meth:`ensure_stream` when it may)."""
        callbacks: list = []
        nc = await connect_nats(settings.nats_url, name, access=NatsAccess.from_settings(settings),
                                on_reconnect=callbacks)
        log_ = cls(nc, settings, callbacks)
        if ensure_stream:
            await log_.ensure_stream()
        return log_

    @classmethod
    async def for_tool(cls, settings: Settings, name: str, *, needs_stream: bool = True) -> EventLog:
        """The event log as a command-line tool opens it: NATS given up on after
        :data:`TOOL_WAIT_SECONDS` (:class:`NatsUnreachable`), and its stream looked up, never
        created or changed (:class:`NoEventLog` when missing; ``needs_stream`` False: not looked
        up), since a tool run with other settings than the deployment's must not change the
        log's retention or duplicate window, nor make a log on another NATS."""
        nc = await connect_nats(settings.nats_url, name, access=NatsAccess.from_settings(settings),
                                give_up_after=TOOL_WAIT_SECONDS)
        log_ = cls(nc, settings, [])
        log_.changes_streams = False
        if needs_stream:
            try:
                async for attempt in log_._retrying(TOOL_WAIT_SECONDS, "stream_info"):
                    with attempt:
                        await log_.js.stream_info(log_.stream)
            except NotFoundError:
                await log_.close()
                raise NoEventLog(f"NATS at {redact(settings.nats_url)} has no stream {log_.stream}: is NATS_URL "
                                 "the deployment's NATS, and PROMPTGEN_STREAM (if set there) the same?") from None
        return log_

    def on_reconnect(self, callback) -> None:
        """Run ``callback()`` after every reconnection (state learnt from core NATS may be stale)."""
        self._reconnect_callbacks.append(callback)

    async def close(self) -> None:
        if not self.nc.is_closed:
            await self.nc.close()

    def stream_config(self) -> api.StreamConfig:
        s = self.settings
        return api.StreamConfig(
            name=self.stream,
            subjects=[subjects.ALL],
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            max_age=s.stream_max_age_days * 86400,
            duplicate_window=s.duplicate_window_seconds,
            num_replicas=s.replicas,
            allow_direct=True,
        )

    async def ensure_stream(self, config: api.StreamConfig | None = None) -> None:
        """Create or update the event log's stream (or the one ``config`` describes). With
        ``PROMPTGEN_STREAM_REPLICAS`` unset, an existing stream keeps its number of replicas.
        A tool's log (:meth:`for_tool`) creates a missing side stream and changes no stream: its
        shell's retention need not be the deployment's."""
        config = config or self.stream_config()
        async for attempt in self._retrying(30, "ensure_stream"):
            with attempt:
                try:
                    info = await self.js.stream_info(config.name)
                except NotFoundError:
                    await self.js.add_stream(config)
                    log.info("stream_created", stream=config.name)
                else:
                    if not self.changes_streams:
                        return
                    if self.settings.stream_replicas is None:
                        config = replace(config, num_replicas=info.config.num_replicas)
                    await self.js.update_stream(config)

    def _retrying(self, seconds: float, what: str = "request") -> AsyncRetrying:
        def retrying(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            log.warning("nats_retry", what=what, attempt=state.attempt_number, error=repr(error)[:300])

        return AsyncRetrying(
            stop=stop_after_delay(seconds),
            wait=wait_exponential_jitter(multiplier=0.05, max=2.0, jitter=0.1),
            retry=retry_if_exception_type(_TRANSIENT + (ConnectionClosedError,)) | retry_if_exception(_not_placed_yet),
            before_sleep=retrying,
            reraise=True,
        )

    # --- writing ------------------------------------------------------------------------

    async def publish(self, event: Envelope, *, retry_seconds: float = 60, unless: Unless | None = None,
                      unchanged: Unchanged | None = None) -> int:
        """Store ``event``; returns its stream sequence (the original's, if a duplicate).
        ``unless``: with an event on one of its subjects stored first, ``event`` is not stored and
        :class:`Precluded` is raised (:meth:`_publish_unless`). ``unchanged``: stored only if
        nothing came on its subjects after its sequence, else :class:`Moved`."""
        payload = encode_event(event)
        subject = event.subject()
        with tracing.publishing(event, subject) as headers:

            def store(sent: dict[str, str]) -> Awaitable[int]:
                return self._publish(subject, payload, sent, event.type, retry_seconds)

            if unchanged is not None:
                return await self._publish_unchanged(event, headers, unchanged, store)
            if unless is None:
                return await store(headers)
            return await self._publish_unless(event, headers, unless, store)

    async def _publish(self, subject: str, payload: bytes, headers: dict[str, str], event_type: str,
                       retry_seconds: float) -> int:
        # The server counts headers in the limit ("NATS/1.0\r\n", "key: value\r\n" each, "\r\n"),
        # and closes a connection that sends more.
        size = len(payload) + 12 + sum(len(k) + len(v) + 4 for k, v in headers.items())
        if size > self.nc.max_payload:
            raise EventTooLarge(event_type, size, self.nc.max_payload)
        try:  # tried once before a retrier is built: building one costs more than the publish
            return (await self.js.publish(subject, payload, stream=self.stream, headers=headers)).seq
        except _TRANSIENT + (ConnectionClosedError,) as exc:
            log.warning("nats_retry", what="publish", error=repr(exc)[:300])
        started = time.monotonic()
        async for attempt in self._retrying(retry_seconds, "publish"):
            with attempt:
                try:
                    ack = await self.js.publish(subject, payload, stream=self.stream, headers=headers)
                except NoStreamResponseError as exc:
                    if time.monotonic() - started > NO_STREAM_RESPONSE_SECONDS:
                        raise StreamSilent(self.stream, NO_STREAM_RESPONSE_SECONDS) from exc
                    raise
                return ack.seq
        raise AssertionError("unreachable")

    # --- beside the events: side streams, core messages, key-value ---------------------

    async def publish_to(self, stream: str, subject: str, data: bytes) -> int:
        """Store ``data`` in a side stream (parked events): operational state, not an event."""
        ack = await self.js.publish(subject, data, stream=stream)
        return ack.seq

    async def purge(self, stream: str, subject: str) -> None:
        """Remove every message of ``stream`` on ``subject`` (wildcards allowed)."""
        await self.js.purge_stream(stream, subject=subject)

    async def subscribe(self, subject: str, cb, *, queue: str | None = None):
        """A core subscription: nothing stored or replayed, only what is published from now on
        (events stored in the log are published too). One member of a ``queue`` group gets each.
        "From now on" at the server: it has the subscription when this returns (a request another
        connection sends next finds it), unless NATS is away, when it gets it on the reconnection."""
        subscription = await self.nc.subscribe(subject, queue=queue or "", cb=cb)
        try:
            await self.nc.flush(timeout=5)
        except (TimeoutError, nats.errors.Error) as exc:  # nats-py's timeout and closed connection among them
            log.debug("subscription_not_confirmed", subject=subject, error=f"{type(exc).__name__}: {exc}"[:200])
        return subscription

    async def send(self, subject: str, data: bytes) -> None:
        """A core publish (a reply, a progress report): stored only if a stream captures it."""
        await self.nc.publish(subject, data)

    async def request(self, subject: str, data: bytes, *, timeout: float):
        """Ask whoever subscribes to ``subject``; nats-py's ``NoRespondersError`` if nobody does."""
        return await self.nc.request(subject, data, timeout=timeout)

    async def key_value(self, bucket: str, *, history: int = 1, replicas: int = 1):
        """The key-value bucket ``bucket``, created if missing (nats-py's ``KeyValue``). With
        ``PROMPTGEN_STREAM_REPLICAS`` unset, an existing bucket keeps its number of replicas
        (asking for another is refused as another configuration: then it is asked for again with
        the bucket's own)."""
        def config(replicas: int) -> api.KeyValueConfig:
            return api.KeyValueConfig(bucket=bucket, history=history, storage=api.StorageType.FILE, replicas=replicas)

        async for attempt in self._retrying(30, "key_value"):
            with attempt:
                try:
                    return await self.js.create_key_value(config(replicas))
                except BadRequestError as exc:
                    if self.settings.stream_replicas is not None or exc.err_code != STREAM_NAME_IN_USE:
                        raise
                existing = (await self.js.stream_info(f"KV_{bucket}")).config.num_replicas or replicas
                return await self.js.create_key_value(config(existing))
        raise AssertionError("unreachable")

    # --- reading ------------------------------------------------------------------------

    async def _last_raw(self, subject: str, leader: bool = False):
        """``leader``: asked of the stream's leader, not any replica (one may lag behind it)."""
        try:
            async for attempt in self._retrying(30, "last_message"):
                with attempt:
                    return await self.js.get_last_msg(self.stream, subject, direct=not leader)
        except NotFoundError:
            return None

    async def last(self, subject: str, *, leader: bool = False) -> StoredEvent | None:
        """The newest event on ``subject`` (no wildcards), or None; ``leader``: as the stream's
        leader has it (a replica answers a plain read, and may lag behind)."""
        raw = await self._last_raw(subject, leader)
        if raw is None:
            return None
        return stored_event(raw.seq, raw.time, raw.subject, raw.data, raw.headers)

    async def at(self, seq: int, *, leader: bool = False) -> StoredEvent | None:
        """The event stored at ``seq``, or None (deleted, aged out, never written); ``leader``:
        as the stream's leader has it (a replica answers a plain read, and may lag behind)."""
        try:
            async for attempt in self._retrying(30, "message_at"):
                with attempt:
                    raw = await self.js.get_msg(self.stream, seq=seq, direct=not leader)
        except NotFoundError:
            return None
        return stored_event(raw.seq, raw.time, raw.subject, raw.data, raw.headers)

    async def last_seq_on(self, subject: str, *, leader: bool = False) -> int | None:
        """The sequence of the newest message on ``subject`` (a filter: wildcards allowed), without
        decoding it (a job's request or end can be large); None if there is none."""
        raw = await self._last_raw(subject, leader)
        return raw.seq if raw is not None else None

    async def last_seq(self) -> int:
        info = await self.js.stream_info(self.stream)
        return info.state.last_seq

    async def state(self) -> LogState:
        return LogState.of(await self.js.stream_info(self.stream))

    async def _ordered(self, filter_subject: str, start_seq: int, stream: str | None = None):
        """An ordered consumer from ``start_seq`` and the queue its messages arrive in.

        While the stream has no leader (a NATS node died, the cluster is electing) the
        consumer is not made: it could not be, or a replica behind the others would serve it
        (found by tests/crash/test_nats_cluster.py: a history read ended an event early).
        Asked again for up to 30 s, as every other request is."""
        arrivals = _Arrivals()
        stream = stream or self.stream
        async for attempt in self._retrying(30, "ordered_consumer"):
            with attempt:
                cluster = (await self.js.stream_info(stream)).cluster
                if cluster is not None and not cluster.leader:
                    raise NoStreamLeader(f"the stream {stream} has no leader")
                config = api.ConsumerConfig(  # a new one each time: subscribe() writes its inbox in it
                    deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                    opt_start_seq=max(1, start_seq),
                    # A consumer whose reader vanished (a crashed gateway, a request that timed
                    # out here but reached the server) is removed by the server.
                    inactive_threshold=10,
                )
                sub = await self.js.subscribe(
                    filter_subject, stream=stream, ordered_consumer=True, config=config,
                    idle_heartbeat=2, cb=arrivals.put,
                )
        return sub, arrivals

    async def _close(self, sub, stream: str | None = None, *, name: str | None = None) -> None:
        """Delete the ephemeral consumer (``name``, or the one ``sub`` reads) now, not after its
        inactivity timeout, and unsubscribe."""
        with contextlib.suppress(Exception):
            name = name or (await sub.consumer_info()).name
            await self.js.delete_consumer(stream or self.stream, name)
        with contextlib.suppress(Exception):
            await sub.unsubscribe()

    async def read_batches(
        self, filter_subject: str, start_seq: int = 1, max_batch: int = 1000
    ) -> AsyncIterator[list[StoredEvent]]:
        """Like :meth:`read`, in batches of what has already arrived."""
        async for msgs in self.read_messages(filter_subject, start_seq, max_batch):
            yield [stored_message(msg) for msg in msgs]

    async def read_messages(
        self, filter_subject: str, start_seq: int = 1, max_batch: int = 1000, *, stream: str | None = None
    ) -> AsyncIterator[list]:
        """The raw messages of :meth:`read_batches` (of the event log, or of ``stream``)."""
        sub, arrivals = await self._ordered(filter_subject, start_seq, stream)
        try:
            info = await sub.consumer_info()
            # A push consumer may have delivered everything already: only "nothing pending and
            # nothing delivered" means the filter matches no event.
            if info.num_pending == 0 and not info.delivered.consumer_seq and sub.pending_msgs == 0 \
                    and arrivals.empty():
                return
            done = False
            while not done:
                batch: list = []
                for msg in await arrivals.take(max_batch, timeout=30):
                    batch.append(msg)
                    if done := msg.metadata.num_pending == 0:
                        break  # caught up: what follows arrived after the read began
                yield batch
        finally:
            await self._close(sub, stream)

    async def read_page(self, filter_subject: str, start_seq: int, limit: int,
                        max_bytes: int | None = None) -> tuple[list[StoredEvent], bool]:
        """At most ``limit`` events matching ``filter_subject`` from ``start_seq``, and whether
        more follow. Nothing past them is sent (:meth:`pull`); what came within 5 s of the last
        message is the page (a message lost on the way makes a short page, not a long wait).
        ``max_bytes``: the page ends with the event that reaches this many bytes of payload
        (one event at least), and more follow if the log holds more."""
        msgs: list = []
        size, full = 0, False
        try:
            async with contextlib.aclosing(self.pull(filter_subject, start_seq, limit, timeout=5)) as batches:
                async for batch in batches:
                    for msg in batch:
                        msgs.append(msg)
                        size += len(msg.data)
                        if len(msgs) == limit or (max_bytes is not None and size >= max_bytes):
                            full = True
                            break
                    if full:
                        break
        except TimeoutError:
            log.warning("log_page_short", subject=filter_subject, start_seq=start_seq, got=len(msgs), limit=limit)
        # More follow when the page is full and the log held more: not when the events after a
        # short page were stored while it was read (they are the next poll's, as a memory log says).
        more = full and msgs[-1].metadata.num_pending > 0
        return [stored_message(msg) for msg in msgs], more

    async def pull(self, filter_subject: str, start_seq: int, limit: int, *, max_batch: int = 1000,
                   timeout: float = 30, max_bytes: int | None = None,
                   quiet: float = PULL_QUIET_SECONDS) -> AsyncIterator[list]:
        """The raw messages of at most ``limit`` events matching ``filter_subject`` from
        ``start_seq``, in batches of at most ``max_batch``, until ``limit`` or the end of the log.

        A pull consumer is asked for ``max_batch`` at a time, and for at most ``max_bytes``
        (unset: :meth:`pull_max_bytes`), so nothing much past what the caller reads is sent (an
        ordered push consumer would stream the rest of the log our way) and a batch of large
        events does not fill this process's memory. They arrive at a callback (a fetch waits for
        each message in a task of its own, more than reading it costs). The server's "no more
        messages" ends the read; a request whose bytes are used up is asked again (the server
        says so, except when the last event fills it exactly: a request silent for ``quiet``
        seconds that the server no longer holds is over, and asked again); any other
        status (a request the server refuses, the consumer deleted) raises :class:`PullFailed`,
        and ``timeout`` seconds without a message raise ``TimeoutError``: a read never ends short
        without saying so."""
        max_bytes = max_bytes or self.pull_max_bytes()
        loop = asyncio.get_running_loop()
        arrivals = _Arrivals()
        sub = await self.nc.subscribe(self.nc.new_inbox(), cb=arrivals.put)
        name = None
        try:
            info = await self.js.add_consumer(self.stream, config=api.ConsumerConfig(
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=max(1, start_seq),
                filter_subject=filter_subject,
                ack_policy=api.AckPolicy.NONE,
                inactive_threshold=10,  # the server removes it if we vanish before deleting it
            ))
            name = info.name
            left = min(limit, info.num_pending)
            next_subject = f"{api.DEFAULT_PREFIX}.CONSUMER.MSG.NEXT.{self.stream}.{name}"
            request = {"no_wait": True, "max_bytes": max_bytes}
            last_message, last_seq = loop.time(), start_seq - 1
            while left > 0:
                # One request at a time, never for more than is left. no_wait: what the log
                # holds now, then 404 if that is fewer.
                asked = min(max_batch, left)
                await self.nc.publish(next_subject, json.dumps({"batch": asked, **request}).encode(),
                                      reply=sub.subject)
                got, status = 0, None
                while asked > got and status is None:
                    try:
                        msgs = await arrivals.take(asked - got, timeout=min(quiet, timeout))
                    except TimeoutError:
                        if loop.time() - last_message >= timeout:
                            raise TimeoutError(f"no message from the log for {timeout} s while reading "
                                               f"{filter_subject} from {start_seq}") from None
                        if (await self.js.consumer_info(self.stream, name)).num_waiting:
                            continue  # the request still waits on the server (a slow moment): so do we
                        log.info("log_pull_asked_again", subject=filter_subject, after_seq=last_seq)
                        break  # it is over without a word: ask again
                    last_message = loop.time()
                    events = []
                    for msg in msgs:
                        said = pull_status(msg)
                        if said is None:
                            events.append(msg)
                        elif said == PULL_FULL and int(msg.headers.get(PENDING_BYTES, 0)) >= max_bytes:
                            raise PullFailed(f"the event of {filter_subject} after sequence {last_seq} is larger "
                                             f"than the {max_bytes} bytes a read may ask for")
                        elif said != PULL_COMPLETED:  # (which may come after its batch, or with the next)
                            status = said  # the request's end: nothing of it follows
                            break
                    if events:
                        got += len(events)
                        left -= len(events)
                        last_seq = events[-1].metadata.sequence.stream
                        yield events
                if status == PULL_END:  # aged out or purged while we read: that is all
                    return
        finally:
            if name is not None:
                await self._close(sub, name=name)
            else:  # no consumer was made
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    def pull_max_bytes(self) -> int:
        """The bytes one pull request may bring: 8 MiB, or two of the largest message the
        server takes, if more (a request that cannot hold the next event brings none)."""
        return max(8 << 20, 2 * self.nc.max_payload)

    async def follow_batches(
        self, filter_subject: str, start_seq: int = 1, max_batch: int = 500, *,
        wanted: Callable[[str, int], bool] | None = None, check_after: float = 10.0,
    ) -> AsyncIterator[list[StoredEvent]]:
        """Like :meth:`follow`, grouping whatever has already arrived into batches. With
        ``wanted``, only the messages it accepts are decoded and yielded (a batch left empty is
        not): it is asked about every message, in log order, with its subject and stream sequence.

        An ordered consumer whose server died can stall for good (nats-py does not always
        reset it when heartbeats stop): after ``check_after`` seconds without a message, the
        consumer is asked for; if the server no longer has it, :class:`FollowStalled` is
        raised, and the follower resumes from its own stored position."""
        sub, arrivals = await self._ordered(filter_subject, start_seq)
        try:
            while True:
                try:
                    msgs = await arrivals.take(max_batch, timeout=check_after)
                except TimeoutError:
                    await self._still_there(sub)
                    continue
                if wanted is not None:
                    msgs = [msg for msg in msgs if wanted(msg.subject, msg.metadata.sequence.stream)]
                    if not msgs:
                        continue
                yield [stored_message(msg) for msg in msgs]
        finally:
            await self._close(sub)

    async def _still_there(self, sub) -> None:
        try:
            await sub.consumer_info()
        except NotFoundError as exc:
            raise FollowStalled("the ordered consumer is gone from the server") from exc

    async def work_queue(
        self,
        durable: str,
        filter_subject: str,
        *,
        max_ack_pending: int,
        ack_wait: float,
        max_deliver: int,
        stream: str | None = None,
    ):
        """A durable pull consumer (on the event log, or on ``stream``), created or updated,
        shared by every replica."""
        stream = stream or self.stream
        config = api.ConsumerConfig(
            durable_name=durable,
            filter_subject=filter_subject,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=ack_wait,
            max_deliver=max_deliver,
            max_ack_pending=max_ack_pending,
            max_waiting=512,
        )
        async for attempt in self._retrying(30, "work_queue"):
            with attempt:
                await self.js.add_consumer(stream, config)
        return await self.js.pull_subscribe_bind(durable, stream=stream)
