"""A connection is held only while its client keeps to time: a request's head must come whole
within its bound of its first byte, its body within its bound of the gateway beginning on it,
and a connection with no request under way is closed as between requests. uvicorn bounds none
of these before a first answer: a head that never ended, a body that never came and a
connection that sent nothing were each held as long as the client liked."""

from __future__ import annotations

import asyncio
import json
import re
import socket

import httpx
import pytest
from structlog.testing import capture_logs

from tests.conftest import SCENARIO, InProcessSystem
from tests.flows import create_personas, create_template, start_job
from tests.metrics_text import sample
from tests.waiting import eventually

HOST = b"Host: 127.0.0.1\r\n"


async def _exchange(port: int, *pieces: bytes, gap: float = 0.0, wait: float = 10.0) -> tuple[bytes, bool]:
    """Send ``pieces`` on a new connection, ``gap`` seconds apart; everything the server answers,
    and whether it closed the connection within ``wait`` seconds of the last piece."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = bytearray()

    async def read_all() -> bool:
        """Read as it comes (a reset, from a write after the server closed, loses what is unread)."""
        try:
            while chunk := await reader.read(65536):
                answer.extend(chunk)
        except ConnectionError:
            pass
        return True

    reading = asyncio.create_task(read_all())
    try:
        try:
            for i, piece in enumerate(pieces):
                if i and gap:
                    await asyncio.sleep(gap)  # a client that is slow on purpose
                writer.write(piece)
                await writer.drain()
        except ConnectionError:
            pass  # closed on it
        try:
            closed = await asyncio.wait_for(asyncio.shield(reading), wait)
        except TimeoutError:
            closed = False
        return bytes(answer), closed
    finally:
        reading.cancel()
        writer.close()


def _statuses(answer: bytes) -> list[bytes]:
    return re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)


def _error(answer: bytes) -> tuple[dict[str, str], dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")[1:]
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return headers, json.loads(body)


async def _door(settings, seconds: float) -> InProcessSystem:
    """The whole system with ``seconds`` for a head, for a body, and between requests."""
    settings.request_head_timeout_seconds = settings.request_body_timeout_seconds = seconds
    return await InProcessSystem(settings, server_options={"timeout_keep_alive": seconds}).start()


@pytest.fixture
async def strict_door(settings, models):
    """Half a second for each: the clients that miss it are refused soon."""
    system = await _door(settings, 0.5)
    yield system
    await system.close()


async def test_a_head_that_does_not_come_whole_in_time_is_408_and_the_connection_closed(strict_door):
    answer, closed = await _exchange(strict_door.port, b"GET /scenario/v2/jobs HTTP/1.1\r\n" + HOST + b"X-A: ")
    assert closed and _statuses(answer) == [b"408"], answer[:400]
    headers, body = _error(answer)
    assert body == {"detail": "The request's line and headers did not all come within 0.5 s",
                    "code": "request_timeout", "field": "headers"}
    assert headers["content-type"] == "application/json" and headers["x-content-type-options"] == "nosniff"
    assert headers["connection"] == "close"


@pytest.fixture
async def roomy_door(settings, models):
    """5 s for each: far more than the slow clients below take, however loaded the machine."""
    system = await _door(settings, 5)
    yield system
    await system.close()


async def test_a_head_that_comes_slowly_but_in_time_is_served(roomy_door):
    pieces = (b"GET /livez HTTP/1.1\r\n", HOST, b"Connection: close\r\n", b"\r\n")
    answer, closed = await _exchange(roomy_door.port, *pieces, gap=0.1)
    assert closed and _statuses(answer) == [b"200"], answer[:400]


async def test_a_body_that_does_not_come_whole_in_time_is_408_and_reaches_nothing(strict_door, event_log):
    before = await event_log.last_seq()
    head = (b"POST /avatar-interactions HTTP/1.1\r\n" + HOST
            + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n")
    with capture_logs() as logs:
        answer, closed = await _exchange(strict_door.port, head + b'{"mode"')
        assert strict_door.server is not None  # the request's task ends once it is told the client left
        await asyncio.gather(*strict_door.server.server_state.tasks, return_exceptions=True)
    assert closed and _statuses(answer) == [b"408"], answer[:400]
    assert _error(answer)[1] == {"detail": "The request's body did not all come within 0.5 s",
                                 "code": "request_timeout", "field": "body"}
    assert await event_log.last_seq() == before  # nothing was published for it
    slow = [e for e in logs if e["event"] == "http_request_too_slow"]
    assert [(e["part"], e["limit_seconds"]) for e in slow] == [("body", 0.5)]
    # the access log and the metrics have the answer the client got, not the app's that was dropped
    assert [e["status"] for e in logs if e["event"] == "http_request"] == [408]
    assert not [e for e in logs if e.get("log_level") == "error"], logs


async def test_a_body_that_comes_slowly_but_in_time_is_served(roomy_door):
    body = json.dumps({"mode": "learn_mode", "avatars": ["slow"]}).encode()
    head = (b"POST /avatar-interactions HTTP/1.1\r\n" + HOST + b"Content-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
    answer, closed = await _exchange(roomy_door.port, head, body[:10], body[10:20], body[20:], gap=0.1)
    assert closed and _statuses(answer) == [b"201"], answer[:400]


async def test_a_body_left_unfinished_after_its_answer_does_not_hold_the_connection(settings, models):
    """The app answers a request it reads no body of; the client then sends the body a byte at a
    time (each byte stopped uvicorn's keep-alive timer): the connection is closed once the body's
    time is up."""
    settings.request_body_timeout_seconds = 2  # time enough to answer /livez on a loaded machine
    system = await InProcessSystem(settings, server_options={"timeout_keep_alive": 0.5}).start()
    try:
        head = b"GET /livez HTTP/1.1\r\n" + HOST + b"Content-Length: 1000\r\n\r\n"
        answer, closed = await _exchange(system.port, head, *[b"x"] * 10, gap=0.3, wait=10)
    finally:
        await system.close()
    assert _statuses(answer) == [b"200"], answer[:400]  # answered before its time was up: no 408 after it
    assert closed


async def test_a_connection_that_sends_nothing_is_closed_as_between_requests(strict_door):
    answer, closed = await _exchange(strict_door.port, wait=5)
    assert closed and answer == b""


async def test_answers_that_outlast_the_bounds_keep_their_connection(settings, models):
    """An SSE stream runs far past every bound: no timer runs while an answer goes out."""
    settings.request_head_timeout_seconds = 0.3
    settings.request_body_timeout_seconds = 0.3
    system = await InProcessSystem(settings, server_options={"timeout_keep_alive": 0.3}).start(generator=False)
    try:
        async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:
            template_id = await create_template(client, SCENARIO)
            ids = await create_personas(client, template_id, 1)
            job = await start_job(client, template_id, {ids[0]["id"]: "learn_mode"})  # no generator: it runs on
            request = (b"GET /scenario/v2/prompt-generation-status/%s HTTP/1.1\r\n%s\r\n"
                       % (job["job_id"].encode(), HOST))
            reader, writer = await asyncio.open_connection("127.0.0.1", system.port)
            try:
                writer.write(request)
                received = b""
                async with asyncio.timeout(10):
                    while b'"status":"processing"' not in received:
                        received += await reader.read(65536)
                # three times the bounds: the stream stays open
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(1):
                        while chunk := await reader.read(65536):
                            received += chunk
                assert not reader.at_eof(), received
                assert _statuses(received) == [b"200"]
            finally:
                writer.close()
    finally:
        await system.close()


async def test_what_is_not_http_is_a_json_400(system):
    for request in (b"GET /livez HTTP/1.1\r\n" + HOST + b"Content-Length: abc\r\n\r\n",
                    b"GET /livez HTTP/1.1\r\n" + HOST + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n"):
        answer, closed = await _exchange(system.port, request)
        assert closed and _statuses(answer) == [b"400"], answer[:400]
        headers, body = _error(answer)
        assert body["code"] == "malformed_request" and body["detail"].startswith("The request is not valid HTTP/1.1")
        assert headers["x-content-type-options"] == "nosniff"


async def test_what_is_not_http_is_answered_after_the_requests_before_it(system):
    answer, closed = await _exchange(system.port, b"GET /livez HTTP/1.1\r\n" + HOST + b"\r\n"
                                     b"GET /livez HTTP/1.1\r\n" + HOST + b"Content-Length: x\r\n\r\n")
    assert closed and _statuses(answer) == [b"200", b"400"], answer[:600]


async def test_a_head_waiting_behind_a_long_answer_has_its_time_once_that_answer_is_out(settings, models):
    """Requests pipelined behind an SSE stream: uvicorn reads no more of the connection while
    they wait, so the head it has not read whole is not the client's delay."""
    settings.request_head_timeout_seconds = 0.3
    system = await InProcessSystem(settings).start(generator=False)
    try:
        async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:
            template_id = await create_template(client, SCENARIO)
            ids = await create_personas(client, template_id, 1)
            job = await start_job(client, template_id, {ids[0]["id"]: "learn_mode"})  # no generator: it runs on
            stream = b"GET /scenario/v2/prompt-generation-status/%s HTTP/1.1\r\n%s\r\n" % (job["job_id"].encode(), HOST)
            waiting = b"GET /livez HTTP/1.1\r\n" + HOST + b"\r\n"
            reader, writer = await asyncio.open_connection("127.0.0.1", system.port)
            try:
                writer.write(stream + waiting + b"GET /livez HTTP/1.1\r\nHo")
                received = b""
                async with asyncio.timeout(10):
                    while b'"status":"processing"' not in received:
                        received += await reader.read(65536)
                with pytest.raises(TimeoutError):  # far past the head's bound: nothing refused
                    async with asyncio.timeout(1):
                        while chunk := await reader.read(65536):
                            received += chunk
                assert b"408" not in received and not reader.at_eof()
                writer.write(b"st: 127.0.0.1\r\nConnection: close\r\n\r\n")
                r = await client.post(f"/scenario/v2/jobs/{job['job_id']}/cancel")
                assert r.status_code == 202, r.text
                async with asyncio.timeout(10):
                    while chunk := await reader.read(65536):
                        received += chunk
                assert _statuses(received) == [b"200", b"200", b"200"], received[-600:]
            finally:
                writer.close()
    finally:
        await system.close()


async def test_a_client_that_takes_nothing_it_is_sent_is_let_go(settings, models):
    """Answers pipelined to a client that reads none of them fill the connection's buffer; once
    nothing more has gone out for the stall bound, the connection is aborted and its buffer dropped."""
    settings.client_stall_timeout_seconds = 0.5
    system = await InProcessSystem(settings).start(generator=False)
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        with capture_logs() as logs:
            await loop.sock_connect(sock, ("127.0.0.1", system.port))
            await loop.sock_sendall(sock, (b"GET /openapi.json HTTP/1.1\r\n" + HOST + b"\r\n") * 60)

            async def let_go() -> bool:
                return any(e["event"] == "http_client_stalled" for e in logs)
            await eventually(let_go, timeout=20, what="the stalled client let go")
        received = bytearray()
        try:  # what the kernel held for it still comes, then the end: the rest was dropped
            async with asyncio.timeout(20):
                while chunk := await loop.sock_recv(sock, 65536):
                    received.extend(chunk)
        except ConnectionResetError:
            pass
        finally:
            sock.close()
        assert 0 < len(_statuses(bytes(received))) < 60
    finally:
        await system.close()


async def test_the_gateways_own_refusals_are_in_the_access_log_and_the_metrics(strict_door):
    """The 408 for a head, the 400 for what is not HTTP and the 431 for a head too large were only
    warnings: no access log line, no count in the HTTP series, and no Date header."""
    limit = strict_door.settings.max_header_bytes
    refused = [(b"POST /avatar-interactions HTTP/1.1\r\n" + HOST + b"X-A: ", "POST", 408, "request_timeout"),
               (b"GET /livez HTTP/1.1\r\n" + HOST + b"Content-Length: abc\r\n\r\n", "GET", 400, "malformed_request"),
               (b"GET /livez HTTP/1.1\r\n" + HOST + b"X-Pad: " + b"a" * (2 * limit), "GET", 431, "headers_too_large"),
               (b"GE", "<unread>", 408, "request_timeout")]  # no method read: not llhttp's DELETE
    async with httpx.AsyncClient(base_url=strict_door.base_url) as client:
        def counted(method: str, status: int) -> float:
            return sample(text, "promptgen_http_requests_total", method=method, route="<unread>",
                          status=str(status)) or 0

        text = (await client.get("/metrics")).text
        before = {(method, status): counted(method, status) for _, method, status, _ in refused}
        with capture_logs() as logs:
            for request, _, status, code in refused:
                answer, closed = await _exchange(strict_door.port, request)
                assert closed and _statuses(answer) == [str(status).encode()], answer[:300]
                headers, body = _error(answer)
                assert body["code"] == code and "date" in headers and headers["x-content-type-options"] == "nosniff"
        text = (await client.get("/metrics")).text
    assert {(method, status): counted(method, status) - before[(method, status)]
            for _, method, status, _ in refused} == {(method, status): 1 for _, method, status, _ in refused}
    lines = [(e["method"], e["route"], e["status"], e["code"]) for e in logs if e["event"] == "http_request"]
    assert lines == [(method, "<unread>", status, code) for _, method, status, code in refused]


async def test_a_body_that_is_not_http_is_a_400_and_lets_its_request_go(strict_door, event_log):
    """A chunk size that is no number: the app, already reading the body, waited for the rest for
    good, and the connection with it (the body's timer had been stopped), answering nothing."""
    before = await event_log.last_seq()
    head = (b"POST /avatar-interactions HTTP/1.1\r\n" + HOST
            + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    with capture_logs() as logs:
        answer, closed = await _exchange(strict_door.port, head + b"5\r\n{\"mod\r\n", b"ZZ\r\n", gap=0.1, wait=5)
        assert strict_door.server is not None
        await asyncio.gather(*strict_door.server.server_state.tasks, return_exceptions=True)
    assert closed and _statuses(answer) == [b"400"], answer[:400]
    assert _error(answer)[1]["code"] == "malformed_request" and _error(answer)[1]["field"] == "body"
    assert await event_log.last_seq() == before
    assert [(e["route"], e["status"]) for e in logs if e["event"] == "http_request"] == [("/avatar-interactions", 400)]
