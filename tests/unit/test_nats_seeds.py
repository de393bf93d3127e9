"""NATS_URL names one server or a comma-separated list of seeds."""

from __future__ import annotations

import pytest
from nats.aio.client import ServerVersion

from services.adapters import event_log as bus


@pytest.mark.parametrize(
    ("url", "servers"),
    [
        ("nats://127.0.0.1:4222", ["nats://127.0.0.1:4222"]),
        ("nats://a:4222,nats://b:4222,nats://c:4222", ["nats://a:4222", "nats://b:4222", "nats://c:4222"]),
        (" nats://a:4222 , nats://b:4222,", ["nats://a:4222", "nats://b:4222"]),
    ],
)
async def test_connect_nats_hands_every_seed_to_the_client(monkeypatch, url, servers):
    seen = {}

    class Connection:
        connected_server_version = ServerVersion("2.15.1")

        async def close(self) -> None: ...

    connection = Connection()

    async def fake_connect(servers_arg, **options):
        seen["servers"] = servers_arg
        return connection

    monkeypatch.setattr(bus.nats, "connect", fake_connect)
    assert await bus.connect_nats(url, "test") is connection
    assert seen["servers"] == servers


async def test_a_caller_that_gives_up_on_connecting_stops_the_attempt(monkeypatch):
    """A connection attempt whose caller was cancelled (or timed out) must not keep trying for the
    rest of the process: a server that is gone would be dialled forever."""
    import asyncio

    started, stopped = asyncio.Event(), asyncio.Event()

    async def never_connects(servers_arg, **options):
        started.set()
        try:
            await asyncio.Event().wait()  # a server that never answers
        finally:
            stopped.set()

    monkeypatch.setattr(bus.nats, "connect", never_connects)
    caller = asyncio.create_task(bus.connect_nats("nats://127.0.0.1:1", "test"))
    await asyncio.wait_for(started.wait(), 5)
    caller.cancel()
    await asyncio.wait_for(stopped.wait(), 5)  # the attempt ended with its caller
