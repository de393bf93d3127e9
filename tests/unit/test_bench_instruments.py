"""The latency instruments of `bench/`: what they read, and when they say it arrived."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from bench.nats_listener import Listener
from bench.sse_clients import messages

pytestmark = pytest.mark.unit


def test_the_nats_listener_takes_messages_split_across_reads_answers_pings_and_stamps_arrivals():
    server = socket.create_server(("127.0.0.1", 0))
    sock = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    listener = Listener(sock)
    peer.sendall(b'INFO {"server_id":"x","headers":true}\r\n')
    subscriber = threading.Thread(target=listener.subscribe)
    subscriber.start()
    said = b""
    while b"PING\r\n" not in said:
        said += peer.recv(4096)
    assert b"SUB promptgen.job.> 1\r\n" in said and b'"headers": true' in said
    peer.sendall(b"PONG\r\n")
    subscriber.join(5)
    reader = threading.Thread(target=listener.run)
    reader.start()

    first = json.dumps({"event_id": "e1"}).encode()
    second = json.dumps({"event_id": "e2", "text": "MSG x 1 5\r\n"}).encode()
    headers = b"NATS/1.0\r\nNats-Msg-Id: e2\r\n\r\n"
    before = time.time()
    peer.sendall(b"MSG promptgen.job.a.x 1 %d\r\n%s" % (len(first), first[:5]))
    time.sleep(0.05)  # the rest in a later read: the message is noted when it is whole
    peer.sendall(first[5:] + b"\r\nPING\r\n")
    peer.sendall(b"MSG promptgen.job.a.z 1 3\r\nabc\r\n")  # not an event: counted, passed over
    peer.sendall(b"HMSG promptgen.job.a.y 1 %d %d\r\n%s%s\r\n" % (len(headers), len(headers) + len(second),
                                                                 headers, second))
    answer = b""
    while b"PONG\r\n" not in answer:
        answer += peer.recv(4096)
    listener.stopping = True  # as on "stop": the end of the reads is not a fault
    peer.close()
    reader.join(5)
    sock.close()
    server.close()

    assert set(listener.received) == {"e1", "e2"}
    assert len(listener.unreadable) == 1 and "promptgen.job.a.z" in listener.unreadable[0]
    for read_at, arrived_at in listener.received.values():
        assert before <= arrived_at <= read_at <= time.time()
    assert listener.received["e1"][1] >= before + 0.05  # stamped by the read that completed it


def test_sse_messages_take_the_times_of_the_read_that_completed_them():
    body = b"id: 1\ndata: a\n\nid: 2\ndata: b\n\n"
    raw = b"%x\r\n%s\r\n" % (len(body), body) + b"0\r\n\r\n"
    split = raw.index(b"id: 2") + 3  # the second message ends in the second read
    reads = [(split, 10.0, 9.5), (len(raw), 11.0, 10.5)]
    assert messages(raw, reads) == [("1", 10.0, 9.5), ("2", 11.0, 10.5)]


def test_the_nats_listener_says_so_when_the_server_closes_before_subscribing():
    server = socket.create_server(("127.0.0.1", 0))
    sock = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    peer.sendall(b'INFO {"server_id":"x"}\r\n-ERR \'Authorization Violation\'\r\n')
    peer.close()
    with pytest.raises(ConnectionError, match="Authorization Violation"):
        Listener(sock).subscribe()
    sock.close()
    server.close()


async def test_an_sse_client_refused_is_reported_with_status_0_and_the_others_are_not_held_up():
    import asyncio

    from bench.sse_clients import client

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    server.close()  # nothing listens there now
    connected, counter = asyncio.Event(), [0]
    report = await client("127.0.0.1", port, "/x", asyncio.Semaphore(1), connected, counter, 1)
    assert report["status"] == 0 and report["reads"] == [] and connected.is_set()


async def test_an_sse_client_whose_server_never_answers_gives_up_with_status_0(monkeypatch):
    import asyncio

    from bench import sse_clients

    monkeypatch.setattr(sse_clients, "HEADERS_WITHIN", 0.2)
    server = socket.create_server(("127.0.0.1", 0))  # accepts (the backlog), never answers
    connected, counter = asyncio.Event(), [0]
    report = await sse_clients.client("127.0.0.1", server.getsockname()[1], "/x", asyncio.Semaphore(1),
                                      connected, counter, 1)
    server.close()
    assert report["status"] == 0 and connected.is_set()
