"""NATS_URL names one server or a comma-separated list of seeds."""

from __future__ import annotations

import pytest

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

    async def fake_connect(servers_arg, **options):
        seen["servers"] = servers_arg
        return "connection"

    monkeypatch.setattr(bus.nats, "connect", fake_connect)
    assert await bus.connect_nats(url, "test") == "connection"
    assert seen["servers"] == servers
