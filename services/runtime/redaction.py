"""Secrets never reach a log line or a message for a person: API keys, bearer tokens, and
the password of a URL (``mongodb://promptgen:…@mongo-1,…``, ``nats://user:…@host``)."""

from __future__ import annotations

import re

_KEYS = re.compile(r"(sk-[A-Za-z0-9_-]{6,}|Bearer\s+[A-Za-z0-9._-]+)")
# scheme://user:password@ : the password ends at the last "@" before the path (a raw "@" in a
# password is invalid in a URL, but a careless one should still not leak). The scheme is at
# most 32 characters: unbounded, each of a long word's letters began a scan to its end, and a
# log line holding a client's 200 KB path took tens of seconds.
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]{0,31}://[^:/?#@\s]*):[^/?#\s]*@")
# scheme://token@ : a user with no password is a token to NATS (nats://s3cret@host)
_URL_TOKEN = re.compile(r"([A-Za-z][A-Za-z0-9+.-]{0,31}://)[^:/?#@\s\[]+@")


def redact(text: str) -> str:
    """``text`` with every API key, bearer token and URL password replaced."""
    if "://" in text:
        text = _URL_PASSWORD.sub(r"\1:[redacted]@", text)
        text = _URL_TOKEN.sub(r"\1[redacted]@", text)
    if "sk-" in text or "Bearer" in text:
        text = _KEYS.sub("[redacted]", text)
    return text
