"""A bound on a request's head (its request line and headers), as the body has one
(:mod:`.body_limit`), and its header values without the whitespace around them.

uvicorn's httptools protocol, which the gateway runs on, takes a head of any size: headers of
100 MB were read into memory and answered. Here the bytes of a head are counted as they come;
one past ``max_head_bytes`` before the head ends is answered ``431`` and the connection closed,
so at most the limit plus one read of the socket is ever held for it. Behind a proxy that
bounds headers itself (HAProxy, nginx) this bound is never reached.

The same protocol gives each request a :class:`DirectBody` (an ASGI extension): how the live
feed writes a caught-up SSE stream's messages to its connection itself."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from contracts.api import ErrorBody

log = structlog.get_logger()


DIRECT_BODY = "promptgen.direct_body"  # the ASGI extension (``scope["extensions"]``) holding a DirectBody


class DirectBody:
    """Writes a streamed response's body to its connection at once, past the ASGI ``send``
    chain: for an SSE stream's messages written by its job's feed itself, a thousand clients
    in one pass of the event loop instead of a thousand tasks each woken to ``send``.

    Only while a write could go out now (:meth:`write` says whether it did): the response's
    head is out, its body is chunked and not ended, the client is there and not behind (the
    connection's buffer is under its high-water mark). Otherwise the caller writes through
    ``send``, which waits for the client. The bytes pass no middleware: a middleware that
    changes a streamed body (compression) would need the stream to go through ``send``."""

    __slots__ = ("_cycle",)

    def __init__(self, cycle: RequestResponseCycle) -> None:
        self._cycle = cycle

    def writable(self) -> bool:
        cycle = self._cycle
        return (cycle.response_started and cycle.chunked_encoding is True and not cycle.response_complete
                and not cycle.disconnected and not cycle.flow.write_paused and not cycle.transport.is_closing())

    def write(self, body: bytes) -> bool:
        """Writes ``body`` as one chunk of the response, if it can go out now."""
        if not body or not self.writable():
            return False
        self._cycle.transport.write(b"%x\r\n%b\r\n" % (len(body), body))
        return True


def direct_body(scope: Mapping[str, Any]) -> DirectBody | None:
    """The request's :class:`DirectBody`, when its server gives one (uvicorn with :class:`BoundedHead`)."""
    writer = scope.get("extensions", {}).get(DIRECT_BODY)
    return writer if isinstance(writer, DirectBody) else None


class BoundedHead(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing a request whose head is over ``max_head_bytes``:
    counted as the parser reads it (a head read whole in one piece, with many headers), and as
    bytes arrive while it is unfinished (a head that never ends, which the parser holds)."""

    max_head_bytes = 64 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # reading a request's line and headers (the next one's, between requests)
        self._received = 0  # bytes received while in the head
        self._parsed = 0  # the head's bytes as the parser gave them
        self._refused = False
        self._owed = False  # a 431 to write once the answers to the requests before it are out

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the connection is closing: the rest is dropped
        if self._in_head:
            self._received += len(data)
        super().data_received(data)
        # Checked once the bytes are parsed: a read holding the end of a head and a body is no
        # head over the limit.
        if self._in_head and self._received > self.max_head_bytes and not self._refused:
            self._refuse()

    # Once refused, the parser still reads what came with the refused head: a request pipelined
    # after it is not begun, so no app sees it.

    def on_message_begin(self) -> None:
        if self._refused:
            return
        super().on_message_begin()
        self._parsed = 0

    def on_url(self, url: bytes) -> None:
        if self._refused:
            return
        self._parsed += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refused:
            return
        self._parsed += len(name) + len(value) + 4  # ": " and CRLF
        if self._parsed > self.max_head_bytes and self.cycle is not None and self.cycle.scope is self.scope:
            self._refuse(mid_request=True)  # a chunked body's trailers, past the bound: the request has begun
            return
        # Whitespace around a field's value is no part of it (RFC 9110, 5.5), and httptools keeps
        # what trails: "Host: 127.0.0.1 " was refused by the host allow-list, an Idempotency-Key
        # with a space after it by its pattern.
        super().on_header(name, value.strip(b" \t"))

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._refused:
            return
        if self._parsed > self.max_head_bytes:
            self._refuse()  # before the app sees the request
            return
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:  # this request's (not an upgrade's)
            self.scope.setdefault("extensions", {})[DIRECT_BODY] = DirectBody(cycle)

    def on_chunk_header(self) -> None:
        # The bytes after a chunk's size line are counted as a head's until its data comes: after
        # the last chunk (size 0) come trailers, header lines the parser holds as they arrive.
        self._in_head, self._received = True, 0

    def on_body(self, body: bytes) -> None:
        self._in_head = False
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        super().on_message_complete()
        self._in_head, self._received = True, 0

    def on_response_complete(self) -> None:
        if self._owed and not self.pipeline:  # the last answer before the refused head is out
            self.server_state.total_requests += 1
            self._answer_431()
            return
        super().on_response_complete()

    def _refuse(self, *, mid_request: bool = False) -> None:
        """``mid_request``: the head refused belongs to a request whose body came (its trailers)."""
        self._refused = True
        log.warning("http_head_too_large", client=f"{self.client[0]}:{self.client[1]}" if self.client else None,
                    limit=self.max_head_bytes)
        if mid_request:  # its app may be reading the body: it gets no more, and no answer goes out
            self.transport.close()
            return
        cycle = self.cycle
        if (cycle is not None and not cycle.response_complete) or self.pipeline:
            # The answers to the requests before it are still going out: the 431 follows them.
            self._owed = True
            return
        self._answer_431()

    def _answer_431(self) -> None:
        self._owed = False
        if self.transport.is_closing():
            return
        body = ErrorBody(
            detail=f"The request's line and headers are larger than this server accepts "
                   f"({self.max_head_bytes} bytes)",
            code="headers_too_large", field="headers",
        ).model_dump_json(exclude_none=True).encode()
        self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                             b"content-type: application/json\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        self.transport.close()


def server_config(app: Any, *, max_head_bytes: int, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration for the gateway: ``options`` as :class:`uvicorn.Config` takes
    them, on the httptools protocol with the head bounded."""
    protocol = type("BoundedHead", (BoundedHead,), {"max_head_bytes": max_head_bytes})
    return uvicorn.Config(app, http=protocol, **options)
