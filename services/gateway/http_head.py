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

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import structlog
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from contracts.api import ErrorBody
from services.gateway.access import ANSWERED, UNREAD, record_answer
from services.gateway.security_headers import EVERY_RESPONSE
from services.runtime.settings import Settings

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
    """uvicorn's httptools protocol, bounding what one connection holds, in bytes and in time:

    * a request whose head is over ``max_head_bytes`` is refused (431): counted as the parser
      reads it (a head read whole in one piece, with many headers), and as bytes arrive while
      it is unfinished (a head that never ends, which the parser holds);
    * a head not whole ``head_timeout`` seconds after its first byte is refused (408), counted
      again from when the answers before it are out (uvicorn reads no more of a connection
      while requests wait their turn on it);
    * a body not whole ``body_timeout`` seconds after the app began on its request: 408 if the
      app has not answered yet, and the connection closed either way;
    * a connection with no request under way and no answer going out is closed after uvicorn's
      keep-alive timeout: uvicorn's own timer starts only after a first answer, and any byte
      stops it, so a connection that sent nothing, or a byte now and then, was held for good;
    * a client that takes nothing of what is sent to it for ``stall_timeout`` seconds while the
      connection's buffer is full is let go (the connection aborted, its buffer dropped).

    Each answer of its own (431, 408, and the 400 for what is not HTTP) is the gateway's JSON
    error body with the headers of every answer (:data:`EVERY_RESPONSE`), follows the answers to
    the requests before it, and closes the connection. At most one of the idle, head and body
    timers runs at a time (:attr:`_timer`); the stall timer runs beside them."""

    max_head_bytes = 64 * 1024
    head_timeout = 10.0
    body_timeout = 60.0
    stall_timeout = 60.0
    # Told of each refusal of its own (method, status, code, client): the access log and metrics.
    record_refusal: Callable[[str, int, str, Any], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # reading a request's line and headers (the next one's, between requests)
        self._in_message = False  # a request begun and not yet whole
        self._received = 0  # bytes received while in the head
        self._parsed = 0  # the head's bytes as the parser gave them
        self._refused = False
        self._owed: bytes | None = None  # an answer to write once the answers to the requests before it are out
        self._timer: asyncio.TimerHandle | None = None
        self._for_head = False  # the timer is the head's
        self._stall: asyncio.TimerHandle | None = None
        self._unsent = 0  # the connection's buffer when the stall timer was armed
        self._method_read: str | None = None  # the method of the request whose head is being read, once read

    def _arm(self, seconds: float, fire: Callable[[], None]) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, fire)
        self._for_head = fire == self._head_too_slow

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._for_head = False

    def _answering(self) -> bool:
        """An answer is under way or waiting to be (pipelined)."""
        return bool(self.pipeline) or (self.cycle is not None and not self.cycle.response_complete)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.timeout_keep_alive, self._idle_too_long)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stall is None:
            self._unsent = self.transport.get_write_buffer_size()
            self._stall = self.loop.call_later(self.stall_timeout, self._stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _stalled(self) -> None:
        """Fired ``stall_timeout`` after the buffer went over its high-water mark, or after the
        last check that found it smaller: a client still taking its bytes has longer."""
        unsent = self.transport.get_write_buffer_size()
        if unsent < self._unsent:
            self._unsent = unsent
            self._stall = self.loop.call_later(self.stall_timeout, self._stalled)
            return
        self._stall = None
        self._log("http_client_stalled", unsent_bytes=unsent, limit_seconds=self.stall_timeout)
        self._disarm()
        self._refused = True
        if self.cycle is not None and not self.cycle.response_complete:
            _let_app_go(self.cycle)
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the connection is closing: the rest is dropped
        if self._in_head:
            self._received += len(data)
        super().data_received(data)
        # Checked once the bytes are parsed: a read holding the end of a head and a body is no
        # head over the limit.
        if self._in_head and self._received > self.max_head_bytes and not self._refused:
            self._refuse_head_too_large()

    # Once refused, the parser still reads what came with the refused head: a request pipelined
    # after it is not begun, so no app sees it.

    def on_message_begin(self) -> None:
        if self._refused:
            return
        super().on_message_begin()
        self._parsed = 0
        self._method_read = None
        self._in_message = True
        self._arm(self.head_timeout, self._head_too_slow)

    def on_url(self, url: bytes) -> None:
        if self._refused:
            return
        self._parsed += len(url)
        if self._method_read is None:  # the parser has it once the URL begins (before, it says DELETE)
            self._method_read = self.parser.get_method().decode("ascii", "replace")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refused:
            return
        self._parsed += len(name) + len(value) + 4  # ": " and CRLF
        if self._parsed > self.max_head_bytes and self.cycle is not None and self.cycle.scope is self.scope:
            # a chunked body's trailers, past the bound: the request has begun
            self._refuse_head_too_large(mid_request=True)
            return
        # Whitespace around a field's value is no part of it (RFC 9110, 5.5), and httptools keeps
        # what trails: "Host: 127.0.0.1 " was refused by the host allow-list, an Idempotency-Key
        # with a space after it by its pattern.
        super().on_header(name, value.strip(b" \t"))

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._refused:
            return
        self._disarm()
        if self._parsed > self.max_head_bytes:
            self._refuse_head_too_large()  # before the app sees the request
            return
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:  # this request's (not an upgrade's)
            self.scope.setdefault("extensions", {})[DIRECT_BODY] = DirectBody(cycle)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        super()._start_asgi_task(cycle, app)
        if cycle.more_body and self._in_message:  # its body still to come: from now on, it is awaited
            self._arm(self.body_timeout, self._body_too_slow)

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
        self._in_message = False
        self._disarm()
        if not self._answering():  # answered before its body was whole: nothing holds it now
            self._arm(self.timeout_keep_alive, self._idle_too_long)

    def on_response_complete(self) -> None:
        if self._owed is not None and not self.pipeline:  # the last answer before the refused head is out
            self.server_state.total_requests += 1
            self._answer_owed()
            return
        super().on_response_complete()
        if self.transport.is_closing() or self._answering():
            return
        if self._for_head:  # a head read only now that the answers before it are out: its time starts again
            self._arm(self.head_timeout, self._head_too_slow)
        elif not self._in_message:
            self._arm(self.timeout_keep_alive, self._idle_too_long)

    def send_400_response(self, msg: str) -> None:
        """What the parser cannot read as HTTP/1.1: the JSON error every other refusal is, after
        the answers to the requests before it. In a body (a chunk's size that is no number), its
        request's app is let go as for a body past its time: it waited for the rest for good."""
        detail = f"The request is not valid HTTP/1.1 ({msg.rstrip('.')})"
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope and self._in_message:  # its head was read
            if any(queued is cycle for queued, _ in self.pipeline):  # waiting behind earlier answers: not begun
                self.pipeline = type(self.pipeline)(entry for entry in self.pipeline if entry[0] is not cycle)
            else:
                self._refuse_begun(400, "Bad Request", "malformed_request", detail, "body")
                return
        self._refuse(400, "Bad Request", "malformed_request", detail, None)

    def _idle_too_long(self) -> None:
        self._timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _head_too_slow(self) -> None:
        self._timer = None
        if self._answering():  # not the client's doing: its head waits for the answers before it
            self._arm(self.head_timeout, self._head_too_slow)
            return
        self._log("http_request_too_slow", part="headers", limit_seconds=self.head_timeout)
        self._refuse(408, "Request Timeout", "request_timeout",
                     f"The request's line and headers did not all come within {self.head_timeout:g} s", "headers")

    def _body_too_slow(self) -> None:
        self._timer = None
        self._log("http_request_too_slow", part="body", limit_seconds=self.body_timeout)
        self._refuse_begun(408, "Request Timeout", "request_timeout",
                           f"The request's body did not all come within {self.body_timeout:g} s", "body")

    def _refuse_begun(self, status: int, reason: str, code: str, detail: str, field: str | None) -> None:
        """Refuse a request whose app began on it and may be reading its body: it reads no more (it
        is told the client left), its own answer, if it has not begun one, is dropped for this one
        (which the access log records as the request's), and the connection is closed."""
        self._refused = True
        self._disarm()
        cycle = self.cycle
        if cycle is not None and not cycle.response_started and not self.transport.is_closing():
            self.transport.write(self._answer(status, reason, code, detail, field))
            cycle.scope.setdefault("extensions", {})[ANSWERED] = status  # for the access log: not the app's answer
        if cycle is not None:
            _let_app_go(cycle)
        self.transport.close()

    def _log(self, event: str, **fields: Any) -> None:
        log.warning(event, client=f"{self.client[0]}:{self.client[1]}" if self.client else None, **fields)

    def _refuse_head_too_large(self, *, mid_request: bool = False) -> None:
        """``mid_request``: the head refused belongs to a request whose body came (its trailers)."""
        self._log("http_head_too_large", limit=self.max_head_bytes)
        if mid_request:  # its app may be reading the body: it gets no more, and no answer goes out
            self._refused = True
            self._disarm()
            self.transport.close()
            return
        self._refuse(431, "Request Header Fields Too Large", "headers_too_large",
                     f"The request's line and headers are larger than this server accepts ({self.max_head_bytes} "
                     "bytes)", "headers")

    def _refuse(self, status: int, reason: str, code: str, detail: str, field: str | None) -> None:
        """Refuse the request whose head is being read, after the answers to the requests before
        it (or at once), and close the connection. Recorded as the app's answers are (the access
        log and the HTTP series, under the route ``<unread>``)."""
        self._refused = True
        self._disarm()
        if self.record_refusal is not None:
            self.record_refusal(self._method(), status, code, self.client)
        answer = self._answer(status, reason, code, detail, field)
        if self._answering():
            # The answers to the requests before it are still going out: this one follows them.
            self._owed = answer
            return
        self._write_and_close(answer)

    def _method(self) -> str:
        """The refused request's method, if the parser read it."""
        return self._method_read or UNREAD

    def _answer(self, status: int, reason: str, code: str, detail: str, field: str | None) -> bytes:
        """A whole HTTP/1.1 answer with the gateway's JSON error body and the headers of every
        answer (uvicorn's ``date`` and ``server``, then :data:`EVERY_RESPONSE`), closing the connection."""
        body = ErrorBody(detail=detail, code=code, field=field).model_dump_json(exclude_none=True).encode()
        headers = [*self.server_state.default_headers,
                   *((name.encode(), value.encode()) for name, value in EVERY_RESPONSE.items()),
                   (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
                   (b"connection", b"close")]
        head = b"".join(b"%s: %s\r\n" % (name, value) for name, value in headers)
        return b"HTTP/1.1 %d %s\r\n%s\r\n%s" % (status, reason.encode(), head, body)

    def _answer_owed(self) -> None:
        answer, self._owed = self._owed, None
        if answer is not None:
            self._write_and_close(answer)

    def _write_and_close(self, answer: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(answer)
            self.transport.close()


def _let_app_go(cycle: RequestResponseCycle) -> None:
    """Tell the request's app its client left, before the connection is gone: its reads get
    ``http.disconnect`` and its sends are dropped."""
    cycle.disconnected = True
    cycle.message_event.set()


def server_config(app: Any, settings: Settings, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration for the gateway: ``options`` as :class:`uvicorn.Config` takes
    them, on the httptools protocol with a request's head and body bounded as ``settings`` say."""
    def record_refusal(method: str, status: int, code: str, client: Any) -> None:
        record_answer(app, method=method, route=UNREAD, path=None, status=status, seconds=None, client=client,
                      code=code)

    protocol = type("BoundedHead", (BoundedHead,), {
        "record_refusal": staticmethod(record_refusal),
        "max_head_bytes": settings.max_header_bytes,
        "head_timeout": settings.request_head_timeout_seconds,
        "body_timeout": settings.request_body_timeout_seconds,
        "stall_timeout": settings.client_stall_timeout_seconds,
    })
    return uvicorn.Config(app, http=protocol, **options)
