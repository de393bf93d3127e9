"""Streams in memory, kept as JetStream keeps them: one sequence per stream, subjects with
``*`` / ``>`` wildcards, ``Nats-Msg-Id`` deduplication within the duplicate window, one
message per subject when the stream says so, and work-queue retention (a message leaves
once acknowledged).

Not kept: ``max_age`` (no test lives for days) and anything about replicas or storage.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

from nats.js import api
from nats.js.errors import BadRequestError

from services.adapters.event_log import (
    EXPECTED_LAST_SUBJECT_SEQUENCE,
    EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
    WRONG_LAST_SEQUENCE,
)

DEFAULT_DUPLICATE_WINDOW = 120.0  # seconds: the server's default
_incarnations = itertools.count(1)  # two streams made within one clock tick are still told apart


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether ``subject`` is one of the subjects ``pattern`` names (NATS wildcards)."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


class Signal:
    """Wakes every task waiting on it: each waiter has a future of its own, so a cancelled
    waiter never disturbs the others."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future] = set()

    def fire(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait(self, timeout: float | None) -> bool:
        """Until the next :meth:`fire` (True) or ``timeout`` seconds (False)."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._waiters.discard(waiter)


@dataclass(frozen=True, slots=True)
class StoredMessage:
    seq: int
    subject: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)
    time: datetime = field(default_factory=lambda: datetime.now(UTC))


class MemoryStream:
    def __init__(self, config: api.StreamConfig) -> None:
        self.config = config
        self.created = datetime.now(UTC)
        self.incarnation = next(_incarnations)
        self._messages: list[StoredMessage | None] = []  # index seq - 1; None once deleted
        self._by_subject: dict[str, list[int]] = defaultdict(list)
        self._dedup: dict[str, tuple[int, float]] = {}  # Nats-Msg-Id -> (seq, when stored)
        # Fired on every change a reader or consumer may wait for (a message stored, an ack,
        # a nak, an expired ack wait): waiters look again.
        self.changed = Signal()

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def last_seq(self) -> int:
        return len(self._messages)

    @property
    def first_seq(self) -> int:
        return next((m.seq for m in self._messages if m is not None), self.last_seq + 1 if self._messages else 0)

    @property
    def log_id(self) -> str:
        return f"{self.name}@{self.created.isoformat()}#{self.incarnation}"

    def captures(self, subject: str) -> bool:
        return any(subject_matches(pattern, subject) for pattern in self.config.subjects or [])

    @property
    def work_queue(self) -> bool:
        return self.config.retention == api.RetentionPolicy.WORK_QUEUE

    def store(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> tuple[int, bool]:
        """Store a message; returns its sequence and whether it was a duplicate (then the
        original's sequence, and nothing stored)."""
        headers = dict(headers or {})
        if (expected := headers.get(EXPECTED_LAST_SUBJECT_SEQUENCE)) is not None:  # checked first, as on NATS
            newest = self.last_on(headers.get(EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT, subject))
            if (newest.seq if newest is not None else 0) != int(expected):
                raise BadRequestError(code=400, err_code=WRONG_LAST_SEQUENCE,
                                      description=f"wrong last sequence: {newest.seq if newest else 0}")
        msg_id = headers.get("Nats-Msg-Id")
        now = time.monotonic()
        if msg_id:
            window = self.config.duplicate_window or DEFAULT_DUPLICATE_WINDOW
            while self._dedup:  # oldest first: ids leave once their window has passed
                oldest = next(iter(self._dedup))
                if now - self._dedup[oldest][1] < window:
                    break
                del self._dedup[oldest]
            if msg_id in self._dedup:
                return self._dedup[msg_id][0], True
        seq = len(self._messages) + 1
        self._messages.append(StoredMessage(seq, subject, bytes(data), headers))
        self._by_subject[subject].append(seq)
        if self.config.max_msgs_per_subject and self.config.max_msgs_per_subject > 0:
            for old in self._by_subject[subject][: -self.config.max_msgs_per_subject]:
                self.delete(old)
        if msg_id:
            self._dedup[msg_id] = (seq, now)
        self.changed.fire()
        return seq, False

    def get(self, seq: int) -> StoredMessage | None:
        return self._messages[seq - 1] if 1 <= seq <= len(self._messages) else None

    def last_on(self, subject: str) -> StoredMessage | None:
        """The newest message on ``subject``, a filter that may hold wildcards."""
        if "*" in subject.split(".") or subject.endswith(">"):
            newest = max((seqs[-1] for on, seqs in self._by_subject.items() if seqs and subject_matches(subject, on)),
                         default=None)
            return self.get(newest) if newest is not None else None
        seqs = self._by_subject.get(subject)
        return self.get(seqs[-1]) if seqs else None

    def after(self, seq: int, filter_subject: str, limit: int) -> list[StoredMessage]:
        """Up to ``limit`` stored messages past ``seq`` that ``filter_subject`` matches, in order."""
        found: list[StoredMessage] = []
        for msg in self._messages[max(0, seq):]:
            if msg is not None and subject_matches(filter_subject, msg.subject):
                found.append(msg)
                if len(found) >= limit:
                    break
        return found

    def count_after(self, seq: int, filter_subject: str) -> int:
        return sum(1 for msg in self._messages[max(0, seq):]
                   if msg is not None and subject_matches(filter_subject, msg.subject))

    def delete(self, seq: int) -> None:
        msg = self.get(seq)
        if msg is None:
            return
        self._messages[seq - 1] = None
        self._by_subject[msg.subject].remove(seq)

    def purge(self, filter_subject: str) -> None:
        for msg in self.after(0, filter_subject, len(self._messages)):
            self.delete(msg.seq)
