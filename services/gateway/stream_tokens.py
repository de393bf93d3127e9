"""Per-job stream tokens: what a browser's ``EventSource`` carries, since it cannot send a header.

A token is ``<expires>.<tenant>.<key id>.<signature>``, the signature an HMAC-SHA256 over the job
id, the tenant, the id of the API key it was issued to and the expiry. It opens one job's SSE
stream until it expires, and nothing else; the key it names must still work when it is used (a
revoked key's tokens stop with it), and any gateway sharing the secret accepts it. A token of
the format before, ``<expires>.<tenant>.<signature>`` (no key id), is still taken until it
expires, within ``PROMPTGEN_STREAM_TOKEN_TTL_SECONDS`` of its issue.
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

    def _sign(self, job_id: str, tenant: str, expires: int, key_id: str | None) -> str:
        signed = f"{job_id}\n{tenant}\n{expires}" + (f"\n{key_id}" if key_id is not None else "")
        mac = hmac.new(self._secret, signed.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def issue(self, job_id: str, tenant: str, key_id: str) -> str:
        expires = int(self._clock().timestamp()) + self._ttl
        return f"{expires}.{tenant}.{key_id}.{self._sign(job_id, tenant, expires, key_id)}"

    def verify(self, token: str, job_id: str) -> tuple[str, str | None] | None:
        """The tenant and the key id the token was issued to (None in a token of the format
        before), if it is this job's and still lives; else None."""
        parts = token.split(".")
        if len(parts) not in (3, 4) or not (parts[0].isascii() and parts[0].isdigit()):  # int() takes "²" too
            return None
        expires, tenant, signature = int(parts[0]), parts[1], parts[-1]
        key_id = parts[2] if len(parts) == 4 else None
        # as bytes: a str that is not ASCII (a client's) cannot be compared as one
        if not hmac.compare_digest(signature.encode(), self._sign(job_id, tenant, expires, key_id).encode()):
            return None
        return (tenant, key_id) if self._clock().timestamp() < expires else None
