"""API keys, kept where every gateway reads them: the JetStream key-value bucket ``promptgen_api_keys``.

A key is ``pgk_<id>_<secret>``: the id finds the record without a scan, and only the
SHA-256 of the whole key is stored. The secret is 256 random bits, so a plain hash is
enough (a slow password hash protects low-entropy secrets, which these are not). A
revoked or expired key keeps its record, so ``keys list`` still shows who had access and when.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from datetime import UTC, datetime, timedelta

from nats.js.errors import KeyNotFoundError, NoKeysError
from pydantic import BaseModel

from services.adapters.ports import EventLogPort, KeyValue

BUCKET = "promptgen_api_keys"
PREFIX = "pgk"
SCOPES = ("jobs:read", "jobs:write", "scenarios:write", "admin")
# What a tenant's own work needs. ``admin`` is not: it reaches every tenant's parked events and
# re-applies them, so ``all`` leaves it out, and a key gets it only by naming it.
TENANT_SCOPES = ("jobs:read", "jobs:write", "scenarios:write")
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # safe in a stream token and a log line
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")


class ApiKeyRecord(BaseModel):
    id: str
    tenant: str
    scopes: list[str]
    key_hash: str  # hex SHA-256 of the whole key
    created_at: datetime
    revoked_at: datetime | None = None
    expires_at: datetime | None = None  # None: until revoked

    def refusal(self, now: datetime) -> str | None:
        """Why this key no longer works at ``now`` (revoked, expired), or None."""
        if self.revoked_at is not None:
            return f"The API key was revoked at {self.revoked_at:%Y-%m-%d %H:%M:%S} UTC"
        if self.expires_at is not None and now >= self.expires_at:
            return f"The API key expired at {self.expires_at:%Y-%m-%d %H:%M:%S} UTC"
        return None

    @property
    def active(self) -> bool:
        return self.refusal(datetime.now(UTC)) is None


_DURATION = re.compile(r"^\s*(\d+)\s*([dhm])\s*$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


MAX_LIFETIME = timedelta(days=3650)


def parse_duration(text: str) -> timedelta:
    """``90d``, ``12h`` or ``30m``, up to ten years; anything else is a ValueError that says what
    is accepted."""
    match = _DURATION.match(text)
    if not match or int(match[1]) == 0:
        raise ValueError(f"expires in {text!r}: give a positive number of days, hours or minutes (90d, 12h, 30m)")
    if int(match[1]) > MAX_LIFETIME / timedelta(**{_UNITS[match[2]]: 1}):
        raise ValueError(f"expires in {text!r}: at most {MAX_LIFETIME.days}d (without it, a key lasts until revoked)")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def parse_scopes(text: str) -> list[str]:
    """``jobs:read,jobs:write``; ``all`` (every scope of a tenant's work, not ``admin``), or
    ``all,admin``; an unknown scope is a ValueError naming it."""
    asked = [s.strip() for s in text.split(",") if s.strip()]
    if "all" in asked:
        asked = [s for s in asked if s != "all"] + list(TENANT_SCOPES)
    unknown = [s for s in asked if s not in SCOPES]
    if unknown or not asked:
        raise ValueError(f"unknown scopes {unknown or asked}: choose from {', '.join(SCOPES)}, or 'all' "
                         f"({', '.join(TENANT_SCOPES)}; 'all,admin' adds admin)")
    return [s for s in SCOPES if s in asked]


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeys:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, event_log: EventLogPort) -> ApiKeys:
        return cls(await event_log.key_value(BUCKET, history=1, replicas=event_log.settings.replicas))

    async def create(self, tenant: str, scopes: list[str], *,
                     expires_in: timedelta | None = None) -> tuple[ApiKeyRecord, str]:
        """A new key: its record, and the key itself (shown once, stored nowhere); it stops
        working ``expires_in`` from now, if given."""
        if not TENANT_PATTERN.match(tenant):
            raise ValueError(f"a tenant is 1 to 64 letters, digits, '-' or '_' (got {tenant!r})")
        key_id = secrets.token_hex(8)
        key = f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        now = datetime.now(UTC)
        record = ApiKeyRecord(id=key_id, tenant=tenant, scopes=scopes, key_hash=_digest(key), created_at=now,
                              expires_at=now + expires_in if expires_in else None)
        await self.kv.create(key_id, record.model_dump_json().encode())
        return record, key

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        return (await self._entry(key_id))[0]

    async def _entry(self, key_id: str) -> tuple[ApiKeyRecord | None, int]:
        """The record and the revision it was read at (0: none)."""
        try:
            entry = await self.kv.get(key_id)
        except KeyNotFoundError:
            return None, 0
        record = ApiKeyRecord.model_validate(json.loads(entry.value)) if entry.value else None
        return record, entry.revision or 0

    async def list(self) -> list[ApiKeyRecord]:
        try:
            ids = await self.kv.keys()
        except NoKeysError:
            return []
        records = [r for r in [await self.get(i) for i in ids] if r is not None]
        return sorted(records, key=lambda r: r.created_at)

    async def revoke(self, key_id: str) -> ApiKeyRecord | None:
        record, revision = await self._entry(key_id)
        if record is None or record.revoked_at is not None:  # an expired key is revoked all the same
            return record
        revoked = record.model_copy(update={"revoked_at": datetime.now(UTC)})
        await self.kv.update(key_id, revoked.model_dump_json().encode(), last=revision)
        return revoked

    async def find(self, key: str) -> ApiKeyRecord | None:
        """The record of a presented key, active or not, or None (unknown or malformed)."""
        prefix, _, rest = key.partition("_")
        key_id, _, secret = rest.partition("_")
        if prefix != PREFIX or not _KEY_ID.match(key_id) or not secret:
            return None
        record = await self.get(key_id)
        if record is None or not hmac.compare_digest(record.key_hash, _digest(key)):
            return None
        return record

    async def verify(self, key: str, now: datetime | None = None) -> ApiKeyRecord | None:
        """The active record of a presented key, or None (unknown, malformed, revoked or expired)."""
        record = await self.find(key)
        if record is None or record.refusal(now or datetime.now(UTC)) is not None:
            return None
        return record
