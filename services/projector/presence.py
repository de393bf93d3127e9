"""One projector at a time: a projector starting asks whether one runs already, and refuses
to run beside it.

Two would both fold the whole log into the same read models: each write is idempotent, but
the work is done twice, their transactions conflict, both answer a rebuild request (two
rebuilds merging into the live collections), and the job manager's counters count each job
twice. A running projector answers on :data:`contracts.subjects.PROJECTOR_PRESENCE` with who it
is; a starting one asks there before it writes anything. NATS says at once that nobody listens
(a projector that died, even by SIGKILL, left with its connection), so a restart waits for
nothing. Two projectors started within the same few milliseconds may both miss each other.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import structlog
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from contracts import subjects
from services.adapters.ports import EventLogPort
from services.projector.rebuild import INBOX_PREFIX
from services.runtime.lifecycle import ServiceRefused

log = structlog.get_logger()

# How long a projector that is there has to answer. One that holds its subscription without
# answering (stopped by a signal, its host cut off until NATS drops its connection) is taken for
# gone once this has passed: a new projector is not kept out for minutes by a dead host.
ANSWER_SECONDS = 2.0


@dataclass(frozen=True)
class Identity:
    role: str = "projector"  # or "rebuild": `promptgen rebuild` writing alone, with no projector running
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    since: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


class AnotherProjector(ServiceRefused):
    """A projector already runs on this NATS: this one must not start (exit 2, not restarted)."""

    def __init__(self, other: dict) -> None:
        self.other = other
        where = ", ".join(f"{k} {other[k]}" for k in ("host", "pid", "since") if k in other) or "unknown"
        if other.get("role") == "rebuild":
            said = (f"`promptgen rebuild` is rebuilding the read models of this NATS's log alone ({where}): "
                    "start the projector once it has finished")
        else:
            said = (f"another projector already runs on this NATS ({where}): one projector writes the read models "
                    "(gateways and generators join it: `promptgen gateway`, `promptgen generator`); stop that one "
                    "first, or point NATS_URL at another deployment")
        super().__init__(said)


async def claim(event_log: EventLogPort, me: Identity | None = None) -> Callable[[], Awaitable[None]]:
    """Ask whether a projector runs; if none answers, answer from now on as ``me``. Returns what
    stops answering (at the process's end). Raises :class:`AnotherProjector` if one answers."""
    me = me or Identity()
    try:
        answer = await event_log.request(subjects.PROJECTOR_PRESENCE, b"", timeout=ANSWER_SECONDS)
    except NoRespondersError:
        pass
    except (NatsTimeout, TimeoutError):
        log.warning("projector_presence_unanswered", seconds=ANSWER_SECONDS,
                    reason="a subscriber on the presence subject did not answer; taken for gone")
    else:
        try:
            other = json.loads(answer.data)
        except ValueError:
            other = {}
        raise AnotherProjector(other if isinstance(other, dict) else {})

    mine = json.dumps(asdict(me)).encode()

    async def answer_asker(msg) -> None:
        # Only to an inbox: a reply subject such as `promptgen.>` would store the answer as an event.
        if (msg.reply or "").startswith(INBOX_PREFIX):
            await msg.respond(mine)

    subscription = await event_log.subscribe(subjects.PROJECTOR_PRESENCE, answer_asker)
    return subscription.unsubscribe
