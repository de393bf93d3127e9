"""Caps on what a gateway holds for a client while it waits: SSE streams, V1 waits and
event-history reads each hold a connection, tasks and often a JetStream consumer. When a
cap is full the gateway answers 503 with ``Retry-After`` at once, so one flood of clients
cannot take every resource of the gateway from the others. With auth on, one tenant may
also hold at most its share of each cap (``PROMPTGEN_TENANT_GATEWAY_SHARE``): past it,
that tenant gets 429 while the others are still served."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import structlog

from services.gateway.errors import ApiError
from services.runtime.settings import Settings

log = structlog.get_logger()

SHARE_FIELD = "gateway_share"


class Slot:
    """One unit of a capacity, given back once, however the work that held it ended."""

    def __init__(self, capacity: Capacity, tenant: str | None) -> None:
        self._capacity: Capacity | None = capacity
        self._tenant = tenant

    def release(self) -> None:
        if self._capacity is not None:
            self._capacity.give_back(self._tenant)
            self._capacity = None


class Capacity:
    def __init__(self, what: str, limit: int, *, retry_after: int, per_tenant: int | None = None) -> None:
        """``per_tenant``: what one tenant may hold of ``limit`` (None: no bound of its own)."""
        self.what = what
        self.limit = limit
        self.retry_after = retry_after
        self.per_tenant = per_tenant
        self.in_use = 0
        self.by_tenant: Counter[str] = Counter()  # only tenants holding a slot: bounded by in_use

    def take(self, tenant: str | None = None) -> Slot:
        """A slot; 429 ``gateway_share_exceeded`` when ``tenant`` holds its share, 503
        ``gateway_busy`` when all ``limit`` are held."""
        counted = tenant if self.per_tenant is not None else None
        if counted is not None and self.by_tenant[counted] >= self.per_tenant:  # type: ignore[operator]
            log.warning("gateway_share_exceeded", what=self.what, tenant=counted, share=self.per_tenant)
            raise ApiError(
                429, f"{SHARE_FIELD}_exceeded",
                f"This tenant already holds {self.per_tenant} of this gateway's {self.limit} {self.what}, "
                f"its share; close some or try again in {self.retry_after}s",
                field=SHARE_FIELD, headers={"Retry-After": str(self.retry_after)},
            )
        if self.in_use >= self.limit:
            log.warning("gateway_busy", what=self.what, limit=self.limit)
            raise ApiError(
                503, "gateway_busy",
                f"This gateway already holds its limit of {self.limit} {self.what}; "
                f"try again in {self.retry_after}s",
                headers={"Retry-After": str(self.retry_after)},
            )
        self.in_use += 1
        if counted is not None:
            self.by_tenant[counted] += 1
        return Slot(self, counted)

    def give_back(self, tenant: str | None) -> None:
        self.in_use -= 1
        if tenant is not None:
            self.by_tenant[tenant] -= 1
            if self.by_tenant[tenant] <= 0:
                del self.by_tenant[tenant]

    @asynccontextmanager
    async def hold(self, tenant: str | None = None) -> AsyncIterator[None]:
        slot = self.take(tenant)
        try:
            yield
        finally:
            slot.release()


def tenant_share(limit: int, share: float) -> int | None:
    """What one tenant may hold of ``limit``: at least one; None when the share is all of it."""
    return None if share >= 1 else max(1, math.floor(limit * share))


@dataclass(frozen=True)
class Capacities:
    sse_streams: Capacity
    v1_waits: Capacity
    history_reads: Capacity

    @classmethod
    def from_settings(cls, settings: Settings, *, tenants: bool = False) -> Capacities:
        """``tenants``: whether callers are told apart (auth on); without it no tenant has a share."""
        share = settings.tenant_gateway_share if tenants else 1.0

        def cap(what: str, limit: int, retry_after: int) -> Capacity:
            return Capacity(what, limit, retry_after=retry_after, per_tenant=tenant_share(limit, share))

        return cls(
            sse_streams=cap("SSE streams", settings.max_sse_streams, 5),
            v1_waits=cap("V1 requests waiting for their job", settings.max_v1_waits, 10),
            history_reads=cap("event-history reads", settings.max_history_reads, 1),
        )
