"""One projector at a time: a projector starting asks whether one runs already, and refuses
to run beside it.

Two would both fold the whole log into the same read models: each write is idempotent, but
the work is done twice, their transactions conflict, both answer a rebuild request (two
rebuilds merging into the live collections), and the job manager's counters count each job
twice. A running projector answers on :data:`contracts.subjects.PROJECTOR_PRESENCE` with who it
is; a starting one asks there before it changes anything. NATS says at once that nobody listens
(a projector that died, even by SIGKILL, left with its connection), so a restart waits for
nothing. `promptgen rebuild` writing alone answers there too: a projector starting meanwhile
waits for it to finish.

What this does not catch (a lease with fencing would): two projectors started within the same
few milliseconds; one started while the running one is reconnecting to NATS (its subscription
is made again once it is back); one on the other side of a split NATS cluster; and one that was
taken for gone (it did not answer for :data:`ANSWER_SECONDS` three times) and then resumes.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from contracts import subjects
from services.adapters.event_log import StoppedBeforeConnected
from services.adapters.ports import EventLogPort
from services.projector.rebuild import INBOX_PREFIX
from services.runtime.lifecycle import ServiceRefused, stop_requested

log = structlog.get_logger()

# How long a projector that is there has to answer, and how many times it is asked. One that
# holds its subscription without answering (stopped by a signal, its host cut off until NATS drops
# its connection) is taken for gone after that: a new projector is not kept out for minutes by a
# dead host. A projector whose event loop is held up for a moment is asked again.
ANSWER_SECONDS = 2.0
ASKS = 3
# "No responders" is the server's word that nothing subscribes: believed only when said this many
# times, NO_RESPONDERS_GAP apart (a test once met it for a subscription already flushed, and one
# wrong "nobody" would start a second writer of the read models). Costs a start 0.2 s.
NO_RESPONDERS_ASKS = 3
NO_RESPONDERS_GAP = 0.1
REBUILD_POLL_SECONDS = 1.0  # how often a projector waiting for `promptgen rebuild` asks again


@dataclass(frozen=True)
class Identity:
    role: str = "projector"  # or "rebuild": `promptgen rebuild` writing alone, with no projector running
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    since: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


def _shown(other: dict[str, Any]) -> dict[str, str]:
    """What another process said of itself, fit for a log line or a console: known fields only,
    printable, short (only the projector's and the admin's users may answer, but an answer is
    still input)."""
    return {k: "".join(ch for ch in str(other[k])[:100] if ch.isprintable())
            for k in ("role", "host", "pid", "since") if k in other}


def _where(other: dict[str, Any]) -> str:
    shown = _shown(other)
    return ", ".join(f"{k} {shown[k]}" for k in ("host", "pid", "since") if k in shown) or "unknown"


class AnotherProjector(ServiceRefused):
    """A projector (or `promptgen rebuild` writing alone) already writes the read models of
    this NATS's log: this one must not start."""

    def __init__(self, other: dict[str, Any], *, me: str = "projector") -> None:
        self.other = other
        where = _where(other)
        if other.get("role") == "rebuild":
            said = f"`promptgen rebuild` is rebuilding the read models of this NATS's log alone ({where}): wait for it"
        elif me == "rebuild":
            said = (f"a projector started on this NATS since this command asked for one ({where}): run "
                    "`promptgen rebuild` again, and that projector rebuilds")
        else:
            said = (f"another projector already runs on this NATS ({where}): one projector writes the read models "
                    "(gateways and generators join it: `promptgen gateway`, `promptgen generator`); stop that one "
                    "first, or point NATS_URL at another deployment")
        super().__init__(said)


async def _who_runs(event_log: EventLogPort) -> dict[str, Any] | None:
    """What the projector (or rebuild) that runs says of itself; None if nobody does."""
    asks, nobody = 0, 0
    while asks < ASKS:
        try:
            answer = await event_log.request(subjects.PROJECTOR_PRESENCE, b"", timeout=ANSWER_SECONDS)
        except NoRespondersError:
            nobody += 1
            if nobody >= NO_RESPONDERS_ASKS:
                return None
            await asyncio.sleep(NO_RESPONDERS_GAP)
            continue
        except (NatsTimeout, TimeoutError):
            asks += 1
            continue
        try:
            other = json.loads(answer.data)
        except ValueError:
            other = {}
        return other if isinstance(other, dict) else {}
    log.warning("projector_presence_unanswered", seconds=ANSWER_SECONDS * ASKS,
                reason="something subscribes to the presence subject but did not answer: taken for gone (a "
                       "projector stopped by a signal or cut off; or this user may not publish there: NATS "
                       "permissions older than this version; or a wildcard subscriber such as `nats sub '>'`)")
    return None


async def claim(event_log: EventLogPort, me: Identity | None = None) -> Callable[[], Awaitable[None]]:
    """Ask whether a projector runs; if none answers, answer from now on as ``me``. Returns what
    stops answering (at the process's end). Raises :class:`AnotherProjector` if one answers. A
    projector that finds `promptgen rebuild` writing alone waits until it has finished (until
    the process is told to stop: :class:`StoppedBeforeConnected`)."""
    me = me or Identity()
    waiting = False
    while (other := await _who_runs(event_log)) is not None:
        if other.get("role") != "rebuild" or me.role == "rebuild":
            raise AnotherProjector(other, me=me.role)
        if not waiting:
            log.info("projector_waiting_for_rebuild", **{f"rebuild_{k}": v for k, v in _shown(other).items()})
            waiting = True
        if stop_requested():
            raise StoppedBeforeConnected("told to stop while waiting for `promptgen rebuild` to finish")
        await asyncio.sleep(REBUILD_POLL_SECONDS)

    mine = json.dumps(asdict(me)).encode()

    async def answer_asker(msg) -> None:
        # Only to an inbox: a reply subject such as `promptgen.>` would store the answer as an event.
        if (msg.reply or "").startswith(INBOX_PREFIX):
            await msg.respond(mine)

    subscription = await event_log.subscribe(subjects.PROJECTOR_PRESENCE, answer_asker)
    return subscription.unsubscribe
