"""Several gateway processes on one port (PROMPTGEN_REUSE_PORT): each binds with SO_REUSEPORT
and serves with its own feed; when one stops, the others go on answering on the same port."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx

from services.cli.embedded import free_port
from tests.servers import stop
from tests.waiting import eventually


def _gateway(settings, port: int) -> subprocess.Popen:
    env = {**os.environ, "NATS_URL": settings.nats_url, "MONGO_URL": settings.mongo_url,
           "MONGO_DB": settings.mongo_db, "PROMPTGEN_PORT": str(port), "PROMPTGEN_REUSE_PORT": "1",
           "PROMPTGEN_LOG_LEVEL": "info", "PROMPTGEN_PROVIDER": "offline"}
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "gateway"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:  # it says when it is ready, or ends
        if "service_ready" in line:
            return proc
    raise AssertionError(f"the gateway ended before it was ready ({proc.wait()})")


async def test_two_gateways_share_a_port_and_one_goes_on_when_the_other_stops(settings):
    port = free_port()
    first = _gateway(settings, port)
    second = None
    try:
        second = _gateway(settings, port)  # without SO_REUSEPORT: "address already in use"
        assert first.poll() is None and second.poll() is None
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            assert (await client.get("/healthz")).status_code == 200
            stop(first)

            async def served() -> bool:  # a new connection, so the kernel picks a listener again
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as fresh:
                    return all([(await fresh.get("/healthz")).status_code == 200 for _ in range(5)])

            assert await eventually(served, what="the port served by the gateway left")
    finally:
        stop(first)
        if second is not None:
            stop(second)
