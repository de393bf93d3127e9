"""Per-job stream tokens: what a browser's ``EventSource`` carries, since it cannot send a header.

A token is ``<expires>.<tenant>.<signature>``, the signature an HMAC-SHA256 over the job id, the
tenant and the expiry. It opens one job's SSE stream until it expires, and nothing else: no
key is in it, and it is checked without a lookup, so any gateway sharing the secret accepts it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from services.runtime.lifecycle import Clock


class StreamTokens:
    def __init__(self, secret: bytes, ttl_seconds: int, clock: Clock) -> None:
        self._secret = secret
        self._ttl = ttl_seconds
        self._clock = clock

    @classmethod
    def per_process(cls, ttl_seconds: int, clock: Clock) -> StreamTokens:
        """A random secret: tokens die with the process (only where auth is off)."""
        return cls(secrets.token_bytes(32), ttl_seconds, clock)

    def _sign(self, job_id: str, tenant: str, expires: int) -> str:
        mac = hmac.new(self._secret, f"{job_id}\n{tenant}\n{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def issue(self, job_id: str, tenant: str) -> str:
        expires = int(self._clock().timestamp()) + self._ttl
        return f"{expires}.{tenant}.{self._sign(job_id, tenant, expires)}"

    def verify(self, token: str, job_id: str) -> str | None:
        """The tenant the token was issued to, if it is this job's and still lives; else None."""
        parts = token.split(".")
        if len(parts) != 3 or not (parts[0].isascii() and parts[0].isdigit()):  # int() takes "²" too
            return None
        expires, tenant, signature = int(parts[0]), parts[1], parts[2]
        if not hmac.compare_digest(signature, self._sign(job_id, tenant, expires)):
            return None
        return tenant if self._clock().timestamp() < expires else None
