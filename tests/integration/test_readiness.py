"""Readiness means something: it turns false while MongoDB or NATS is down, and true again
once each is back (servers of the test's own, stopped and started on the same port)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from services.projector.bootstrap import bootstrap as projector_bootstrap
from services.runtime.settings import Settings
from tests.conftest import InProcessSystem
from tests.servers import MongoServer, NatsServer
from tests.waiting import eventually


@pytest.fixture
def servers(tmp_path):
    nats, mongo = NatsServer(tmp_path / "nats").start(), MongoServer().start()
    yield nats, mongo
    nats.stop()
    mongo.stop()


async def _becomes(urls: list[str], ready: bool, what: str, check: str) -> None:
    """Each of ``urls`` answers 200 with ``check`` passed, or 503 naming ``check``."""
    async def all_there() -> bool:
        async with httpx.AsyncClient(timeout=10) as client:
            for url in urls:
                answer = await client.get(url)
                if ready and (answer.status_code != 200 or answer.json()["checks"][check] is not True):
                    return False
                if not ready and (answer.status_code != 503 or check not in answer.text):
                    return False
        return True
    await eventually(all_there, timeout=30, what=what)


async def test_readiness_follows_mongodb_and_nats(servers):
    nats, mongo = servers
    settings = Settings(nats_url=nats.url, mongo_url=mongo.url, mongo_db="readiness", provider="offline",
                        projector_http_port=0, generator_http_port=0)
    system = await InProcessSystem(settings).start(generator=False)
    await system.stop_service("projector")  # the one below, built here, shows its port
    projector = await projector_bootstrap(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run(stop))
    try:
        # its ops server is made, then listens: its port is known once it does
        await eventually(lambda: asyncio.sleep(0, projector.ops and projector.ops.port),
                         what="the projector's HTTP port")
        urls = [f"{system.base_url}/readyz", f"http://127.0.0.1:{projector.ops.port}/readyz"]
        await _becomes(urls, True, "ready at start", "mongodb")

        mongo.stop()
        await _becomes(urls, False, "not ready without MongoDB", "mongodb")
        async with httpx.AsyncClient() as client:  # alive all the same: nothing to restart
            live = await client.get(f"{system.base_url}/livez")
            assert live.status_code == 200 and live.json()["checks"] and all(live.json()["checks"].values())
            for url, status in ((f"{system.base_url}/livez", 200), (f"{system.base_url}/healthz", 200),
                                (urls[0], 503), (urls[1], 503)):  # a load balancer's probe may ask with HEAD
                head = await client.head(url)
                assert (head.status_code, head.content) == (status, b""), url
        mongo.start()
        await _becomes(urls, True, "ready once MongoDB is back", "mongodb")

        nats.stop()
        await _becomes(urls, False, "not ready without NATS", "nats")
        nats.start()
        await _becomes(urls, True, "ready once NATS is back", "nats")
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await projector.aclose()
        await system.close()


async def test_a_gateway_says_it_is_ready_once_it_listens_and_is_out_of_rotation_once_told_to_stop(
        settings, models, monkeypatch):
    """Gateways sharing a port: one that says it is ready takes connections from then (not from
    when its lifespan has connected everything, which comes first), and one told to stop answers
    `/readyz` with 503 on the port of its own while it finishes its streams."""
    import socket

    import uvicorn
    from sse_starlette.sse import AppStatus

    import services.gateway.app as gateway_app

    listening = []
    monkeypatch.setattr(gateway_app, "announce_ready", lambda **fields: listening.append(
        (sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN), fields)))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = gateway_app.create_app(settings.model_copy(update={"gateway_http_port": 0}))
    server = gateway_app.GatewayServer(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await eventually(lambda: asyncio.sleep(0, listening), what="the gateway's service_ready line")
        [(accepting, fields)] = listening
        assert accepting == 1, "said ready before it listened"
        assert fields["port"] == sock.getsockname()[1]  # the port it listens on, not the one it was told
        own = f"http://127.0.0.1:{fields['http_port']}/readyz"
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await client.get(own)).json()["checks"]["serving"] is True
            AppStatus.should_exit = True  # as uvicorn's signal handler sets it
            try:
                answer = await client.get(own)
                assert answer.status_code == 503 and answer.json()["checks"]["serving"] is False
            finally:
                AppStatus.should_exit = False
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 20)
        sock.close()
