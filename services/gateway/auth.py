"""Who is asking, and may they: API keys (``Authorization: Bearer``), scopes, tenants, stream tokens.

Every route but the operational and documentation ones takes a :class:`Caller` through
``require(scope)`` (aliases in ``deps.py``); ``tests/integration/test_authorization.py``
walks ``app.routes`` so that a new route cannot go unguarded. A caller sees only its
tenant's templates, personas, jobs and interactions: another tenant's ids answer 404, as
an unknown id does, so ids reveal nothing about other tenants.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import structlog
from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.adapters.api_keys import SCOPES, ApiKeys
from services.adapters.ports import EventLogPort
from services.gateway.errors import ApiError
from services.gateway.stream_tokens import StreamTokens
from services.runtime.lifecycle import Clock, utc_now
from services.runtime.settings import Settings

COSTLY_SCOPES = frozenset({"jobs:write", "scenarios:write"})  # what counts as a request that costs
DEFAULT_TENANT = "default"  # the owner of everything created before keys, or with auth off
log = structlog.get_logger()


class AuthNotConfigured(RuntimeError):
    """The gateway must not start open: say what to configure."""


@dataclass(frozen=True)
class Caller:
    tenant: str
    key_id: str | None  # None: auth is off, or a stream token
    scopes: frozenset[str]

    def owns(self, tenant: str | None) -> bool:
        """Whether a thing of ``tenant`` (None: created before tenants) is this caller's."""
        return (tenant or DEFAULT_TENANT) == self.tenant

    def only_mine(self) -> dict[str, Any]:
        """A read-model filter for this caller's documents."""
        if self.tenant == DEFAULT_TENANT:
            return {"tenant": {"$in": [None, DEFAULT_TENANT]}}
        return {"tenant": self.tenant}

    def stamp(self) -> dict[str, str | None]:
        """``tenant`` and ``actor`` for a command event (none with auth off: as before keys)."""
        if self.key_id is None:
            return {}
        return {"tenant": self.tenant, "actor": self.key_id}


OPEN = Caller(tenant=DEFAULT_TENANT, key_id=None, scopes=frozenset(SCOPES))


@dataclass
class Guard:
    enforced: bool
    keys: ApiKeys
    tokens: StreamTokens
    clock: Clock = utc_now

    async def caller(self, credentials: HTTPAuthorizationCredentials | None, scope: str | None) -> Caller:
        """The key's holder, if the key is valid and (unless ``scope`` is None) holds ``scope``."""
        if credentials is None:
            if not self.enforced:
                return OPEN
            raise unauthenticated("No API key: send 'Authorization: Bearer <key>'")
        record = await self.keys.find(credentials.credentials)
        if record is None:
            raise unauthenticated("The API key is unknown or revoked")
        if refusal := record.refusal(self.clock()):  # told only to who holds the key itself
            raise unauthenticated(refusal)
        if scope is not None and scope not in record.scopes:
            raise ApiError(403, "missing_scope", f"This API key lacks the scope '{scope}'", field=scope)
        return Caller(tenant=record.tenant, key_id=record.id, scopes=frozenset(record.scopes))

    def stream_endpoint(self, job_id: str, caller: Caller) -> str:
        """Where a browser follows the job: with auth on, a token for this job alone in the query."""
        path = f"/scenario/v2/prompt-generation-status/{job_id}"
        if not self.enforced or caller.key_id is None:  # auth off: no token is handed out
            return path
        return f"{path}?token={self.tokens.issue(job_id, caller.tenant, caller.key_id)}"


def unauthenticated(detail: str) -> ApiError:
    return ApiError(401, "unauthenticated", detail, headers={"WWW-Authenticate": "Bearer"})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name we cannot judge is treated as reachable from outside


def auth_must_be_on(settings: Settings) -> bool:
    """Whatever keys exist: ``PROMPTGEN_AUTH=required``, or bound to anything but loopback."""
    return settings.auth == "required" or not is_loopback(settings.host)


async def open_guard(settings: Settings, event_log: EventLogPort, clock: Clock) -> Guard:
    """Decide the mode once, at start: open only on loopback with no keys and ``PROMPTGEN_AUTH`` not
    ``required``. A key created while a gateway runs open takes effect at its next start."""
    keys = await ApiKeys.open(event_log)
    must = auth_must_be_on(settings)
    records = await keys.list()  # read once: whether auth is on, and whether any key still works
    has_keys = any(r.revoked_at is None for r in records)  # an expired key keeps auth on
    if must and not has_keys:
        why = "PROMPTGEN_AUTH=required" if settings.auth == "required" else f"bound to {settings.host}"
        raise AuthNotConfigured(f"{why}, but there is no active API key: create one with "
                                "`promptgen keys create --tenant NAME --scopes all,admin`")
    enforced = must or has_keys
    if has_keys and not any(r.active for r in records):
        log.warning("no_usable_api_key", reason="every key expired: auth stays on, and every request is refused "
                    "until `promptgen keys create` makes a new one")
    secret = settings.stream_token_secret
    if enforced and secret is None:
        raise AuthNotConfigured("auth is on, but PROMPTGEN_STREAM_TOKEN_SECRET (or _FILE) is not set: every "
                                "gateway needs the same secret to accept the stream tokens the others issue")
    ttl = settings.stream_token_ttl_seconds
    tokens = (StreamTokens(secret.get_secret_value().encode(), ttl, clock) if secret
              else StreamTokens.per_process(ttl, clock))
    if not enforced:
        log.warning("auth_off", host=settings.host,
                    reason="no API keys and bound to loopback: every request is served, as the default tenant")
    else:
        log.info("auth_on", host=settings.host)
    return Guard(enforced=enforced, keys=keys, tokens=tokens, clock=clock)


bearer = HTTPBearer(auto_error=False, description="An API key: `promptgen keys create`")


ADMITTED = "promptgen.caller"  # the request scope's key for a caller admitted before its body was read


async def admit(request: Request, credentials: HTTPAuthorizationCredentials | None, scope: str) -> Caller:
    """The caller, holding ``scope`` (401 without a valid key, 403 without the scope). A writing
    scope's request also counts against its tenant's requests per minute (429 past it)."""
    gateway = request.app.state.gateway
    caller: Caller = await gateway.guard.caller(credentials, scope)
    if scope in COSTLY_SCOPES:
        await gateway.quotas.take_request(caller)
    return caller


async def admit_first(request: Request, scope: str) -> None:
    """:func:`admit` before the request's body is read (FastAPI reads and validates a body before
    any dependency runs): a request without the key or the scope costs no parsing of what it
    sent, and a tenant's malformed bodies count against its requests per minute as any other."""
    request.scope[ADMITTED] = (scope, await admit(request, await bearer(request), scope))


def require(scope: str) -> Any:
    """A dependency: the caller, holding ``scope`` (see :func:`admit`): the one admitted before the
    body was read, on the routes that do so (``services.gateway.json_body``)."""
    assert scope in SCOPES, scope

    async def authorize(request: Request,
                        credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Caller:
        admitted = request.scope.get(ADMITTED)
        if admitted is not None and admitted[0] == scope:  # admitted for this scope, before the body
            return admitted[1]
        return await admit(request, credentials, scope)

    authorize.__name__ = f"require_{scope.replace(':', '_')}"
    authorize.scope = scope  # type: ignore[attr-defined]  # found by the route, to admit first
    return Depends(authorize)


def required_scope(dependant: Any) -> str | None:
    """The scope a route's dependencies :func:`require`, if any (FastAPI's ``Dependant`` tree)."""
    for sub in dependant.dependencies:
        found = getattr(sub.call, "scope", None) or required_scope(sub)
        if found:
            return found
    return None


async def any_key(request: Request,
                  credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Caller:
    """A dependency: the caller, with any valid key whatever its scopes (401 without one)."""
    guard: Guard = request.app.state.gateway.guard
    return await guard.caller(credentials, None)


async def stream_reader(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    token: str | None = Query(None, max_length=512, description="A stream token from the job's `sse_endpoint`"),
) -> Caller:
    """SSE: a key with ``jobs:read``, or the job's own stream token (an EventSource sends no header)."""
    guard: Guard = request.app.state.gateway.guard
    if token is None or credentials is not None or not guard.enforced:
        return await guard.caller(credentials, "jobs:read")
    # the route declares job_id (and its pattern); a dependency that did too would declare it again
    verified = guard.tokens.verify(token, request.path_params["job_id"])
    if verified is None:
        raise unauthenticated("The stream token is expired, or is not this job's")
    tenant, key_id = verified
    if key_id is not None:  # the key it was issued to must still work: a revoked key's tokens stop with it
        record = await guard.keys.get(key_id)
        if record is None or record.tenant != tenant:
            raise unauthenticated("The stream token's API key is unknown")
        if refusal := record.refusal(guard.clock()):
            raise unauthenticated(f"The stream token's key no longer works: {refusal}")
    return Caller(tenant=tenant, key_id=key_id, scopes=frozenset({"jobs:read"}))
