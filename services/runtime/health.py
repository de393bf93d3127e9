"""Liveness and readiness that mean something.

* live: the process's own loops run (a dead one means: restart me);
* ready: what it needs answers right now (NATS with JetStream, MongoDB) and, for the
  projector, it is not too far behind the log; an orchestrator stops sending traffic,
  and an operator sees why in the answer's ``checks``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from services.adapters.read_models import STATE

# A probe answers in well under a kubelet's default one-second timeout... or says no.
CHECK_TIMEOUT = 0.8

Check = Callable[[], Awaitable[bool]]


async def nats_answers(event_log: Any) -> bool:
    """Connected, and JetStream answers (in-memory doubles have no connection: always ready)."""
    nc = getattr(event_log, "nc", None)
    if nc is None:
        return True
    if not nc.is_connected:
        return False
    await event_log.js.account_info()
    return True


async def mongo_answers(models: Any) -> bool:
    """MongoDB answers a ping and a read: a server whose storage failed can still answer the
    ping (SecantusDB did, its data directory removed, while every query failed)."""
    command = getattr(models.db, "command", None)
    if command is None:  # the in-memory read models
        return True
    await command("ping")
    await models.db[STATE].find_one({}, {"_id": 1})
    return True


@dataclass
class Health:
    """``live``: synchronous flags; ``ready``: named checks, each bounded in time."""

    live_checks: dict[str, Callable[[], bool]] = field(default_factory=dict)
    ready_checks: dict[str, Check] = field(default_factory=dict)

    def live(self) -> tuple[bool, dict[str, bool]]:
        checks = {name: bool(check()) for name, check in self.live_checks.items()}
        return all(checks.values()), checks

    async def ready(self) -> tuple[bool, dict[str, bool]]:
        async def one(check: Check) -> bool:
            try:
                return await asyncio.wait_for(check(), CHECK_TIMEOUT)
            except Exception:  # noqa: BLE001 - a check that fails or times out is a "no"
                return False

        names = list(self.ready_checks)
        results = await asyncio.gather(*(one(self.ready_checks[n]) for n in names))
        checks = dict(zip(names, results, strict=True))
        live, live_checks = self.live()
        checks.update(live_checks)
        return live and all(results), checks
