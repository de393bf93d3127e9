"""Dependencies as ``Annotated`` aliases, so route signatures stay short.

Everything comes from the :class:`~services.gateway.bootstrap.Gateway` the lifespan
built (``app.state.gateway``: see ``app.py`` and ``bootstrap.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Header, Path, Query, Request
from fastapi.routing import APIRoute

from contracts.subjects import TOKEN_PATTERN
from services.adapters.llm.base import Provider
from services.adapters.llm.limits import SharedLimiter
from services.adapters.parked import ParkedEvents
from services.adapters.ports import EventLogPort, ReadModelsPort
from services.gateway.auth import Caller, Guard, require, stream_reader
from services.gateway.capacity import Capacities
from services.gateway.errors import ApiError
from services.gateway.feeds import JobFeeds
from services.gateway.freshness import ReadFence
from services.gateway.projection import ProjectionWaiter
from services.gateway.quotas import TenantQuotas
from services.runtime.lifecycle import Clock
from services.runtime.metrics import Metrics
from services.runtime.settings import Settings


def _state(name: str) -> Callable[[Request], Any]:
    # async though it awaits nothing: FastAPI would run a plain ``def`` dependency in a thread
    async def get(request: Request) -> Any:
        return getattr(request.app.state.gateway, name)

    get.__name__ = f"get_{name}"
    return get


SettingsDep = Annotated[Settings, Depends(_state("settings"))]
EventLogDep = Annotated[EventLogPort, Depends(_state("event_log"))]
ModelsDep = Annotated[ReadModelsPort, Depends(_state("models"))]
ProviderDep = Annotated[Provider, Depends(_state("provider"))]
FeedsDep = Annotated[JobFeeds, Depends(_state("feeds"))]
WaiterDep = Annotated[ProjectionWaiter, Depends(_state("waiter"))]
FenceDep = Annotated[ReadFence, Depends(_state("fence"))]
LimiterDep = Annotated[SharedLimiter | None, Depends(_state("limiter"))]
CapacityDep = Annotated[Capacities, Depends(_state("capacity"))]
ParkedDep = Annotated[ParkedEvents, Depends(_state("parked"))]
ClockDep = Annotated[Clock, Depends(_state("clock"))]
MetricsDep = Annotated[Metrics, Depends(_state("metrics"))]
GuardDep = Annotated[Guard, Depends(_state("guard"))]
QuotasDep = Annotated[TenantQuotas, Depends(_state("quotas"))]

# The caller, holding a scope (services.gateway.auth): every guarded route takes one of these.
Reader = Annotated[Caller, require("jobs:read")]
JobWriter = Annotated[Caller, require("jobs:write")]
ScenarioWriter = Annotated[Caller, require("scenarios:write")]
Admin = Annotated[Caller, require("admin")]
StreamReader = Annotated[Caller, Depends(stream_reader)]


# Ids in paths and queries: a malformed one is a 422 naming it, as in a body (an unknown one is a 404).
def _id(where: Callable[..., Any], what: str) -> Any:
    return where(pattern=TOKEN_PATTERN, description=f"The {what}'s id (letters, digits, '-' and '_')")


TemplateIdPath = Annotated[str, _id(Path, "template")]
PersonaIdPath = Annotated[str, _id(Path, "persona")]
JobIdPath = Annotated[str, _id(Path, "job")]
InteractionIdPath = Annotated[str, _id(Path, "avatar interaction")]
TemplateIdQuery = Annotated[str, _id(Query, "template")]
PersonaIdQuery = Annotated[str, _id(Query, "persona")]


IDEMPOTENCY_KEY = "Idempotency-Key"


def idempotency_key(names: str) -> Any:
    """The ``Idempotency-Key`` header, if sent: what it ``names`` (its description in the API
    document). Sent twice it is a 422: two keys may name two jobs, and which one counts would be
    a guess."""
    header = Header(None, alias=IDEMPOTENCY_KEY, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$",
                    description=names)

    # the header as a default, not in Annotated: this module's annotations are strings, which
    # FastAPI resolves in its globals, where ``header`` is not
    async def once(request: Request, key: str | None = header) -> str | None:
        sent = len(request.headers.getlist(IDEMPOTENCY_KEY))
        if sent > 1:
            raise ApiError(422, "invalid_request",
                           f"Invalid '{IDEMPOTENCY_KEY}': send the header once (this request sent it {sent} times)",
                           field=IDEMPOTENCY_KEY)
        return key

    return Depends(once)


async def one_value_per_query_parameter(request: Request) -> None:
    """A query parameter the route reads, given twice, is a 422 naming it: read as the last one,
    as FastAPI does, a proxy or cache in front that reads the first would see another request (as
    with a JSON key given twice, or a repeated ``Idempotency-Key``). Others are ignored, as any
    parameter a route does not read is."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not request.url.query:
        return
    read = _query_names(route)
    seen: set[str] = set()
    for name, _ in request.query_params.multi_items():
        if name in read and name in seen:
            raise ApiError(422, "invalid_request", f"The query parameter '{name}' is given more than once",
                           field=name)
        seen.add(name)


def _query_names(route: APIRoute) -> frozenset[str]:
    """The query parameters ``route`` reads (its dependencies' too), worked out once per route."""
    names = getattr(route, "_query_names", None)
    if names is None:
        names, todo = frozenset[str](), [route.dependant]
        while todo:  # the route's own and its dependencies'
            dependant = todo.pop()
            names |= {param.alias for param in dependant.query_params}
            todo += dependant.dependencies
        route._query_names = names  # type: ignore[attr-defined]  # a route is not hashable: kept on it
    return names
