"""Caps on what one gateway holds: past the limit, 503 with Retry-After; past a tenant's share
of it (auth on), 429; a slot comes back when its client leaves."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import httpx
import pytest_asyncio
from pydantic import SecretStr

from services.adapters.api_keys import SCOPES, ApiKeys
from tests.conftest import InProcessSystem
from tests.flows import create_personas, create_template, cycle_modes, start_job
from tests.waiting import eventually


@pytest_asyncio.fixture
async def small_gateway(settings, models):
    """A whole system whose gateway holds one SSE stream and one V1 wait at a time."""
    settings.max_sse_streams = 1
    settings.max_v1_waits = 1
    system = await InProcessSystem(settings).start()
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:
        yield system, client
    await system.close()


def _assert_busy(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["Retry-After"].isdigit()
    assert r.json()["code"] == "gateway_busy"


def _capacity(system):
    return system.server.config.app.state.gateway.capacity


async def _given_back(capacity, what: str) -> None:
    """The server learns that a client left when its connection closes, a moment after ours."""
    async def free() -> bool:
        return capacity.in_use == 0

    await eventually(free, what=f"the {what} slot given back")


async def test_a_second_sse_stream_waits_for_the_first_to_close(small_gateway, scenario_document):
    system, client = small_gateway
    template_id = await create_template(client, scenario_document)
    personas = await create_personas(client, template_id, 1)
    await system.stop_service("generator")  # the job stays open, and so does its stream
    endpoint = (await start_job(client, template_id, cycle_modes([p["id"] for p in personas])))["sse_endpoint"]

    async with client.stream("GET", endpoint) as first:
        assert first.status_code == 200
        lines = first.aiter_lines()  # kept: a line iterator left to the garbage collector closes the stream
        while not (await anext(lines)).startswith("data:"):
            pass  # once a message came, the stream is open and holds the gateway's one slot
        _assert_busy(await client.get(endpoint))
        await lines.aclose()

    await _given_back(_capacity(system).sse_streams, "SSE stream")
    async with client.stream("GET", endpoint) as second:
        assert second.status_code == 200


async def test_a_v1_caller_that_leaves_gives_its_slot_back(small_gateway, scenario_document):
    system, client = small_gateway
    template_id = await create_template(client, scenario_document)
    ids = [p["id"] for p in await create_personas(client, template_id, 1)]
    body = {"template_id": template_id, "persona_ids": ids, "mode_mapping": cycle_modes(ids)}
    await system.stop_service("generator")  # the first caller waits for a job nobody works on
    first = asyncio.create_task(client.post("/scenario/generate-final-prompts", json=body))
    async def published() -> bool:  # once its job is, it holds the slot
        return bool((await client.get("/scenario/v2/jobs")).json()["jobs"])

    await eventually(published, what="the first V1 job")
    busy = await client.post("/scenario/generate-final-prompts", json=body)
    _assert_busy(busy)
    assert len((await client.get("/scenario/v2/jobs")).json()["jobs"]) == 1  # a busy answer starts no job

    first.cancel()  # the caller gives up: its connection closes
    await asyncio.gather(first, return_exceptions=True)
    await _given_back(_capacity(system).v1_waits, "V1")  # long before its job could end
    system.start_service("generator")
    r = await client.post("/scenario/generate-final-prompts", json=body)
    assert r.status_code == 200 and r.json()["successful"] == 1


async def _open(client: httpx.AsyncClient, endpoint: str, stack: AsyncExitStack) -> None:
    """An SSE stream held open until ``stack`` closes: its first message has come."""
    response = await stack.enter_async_context(client.stream("GET", endpoint))
    assert response.status_code == 200, await response.aread()
    lines = response.aiter_lines()
    stack.push_async_callback(lines.aclose)
    while not (await anext(lines)).startswith("data:"):
        pass


async def test_one_tenant_holds_at_most_its_share_of_the_streams(settings, event_log, scenario_document):
    """With auth on, a tenant past its share of a gateway's SSE streams gets 429 naming the share,
    while another tenant's stream still opens; a stream closed gives its tenant's slot back."""
    store = await ApiKeys.open(event_log)
    keys = {tenant: (await store.create(tenant, list(SCOPES)))[1] for tenant in ("acme", "globex")}
    secured = settings.model_copy(update={"auth": "required", "stream_token_secret": SecretStr("s3cret"),
                                          "max_sse_streams": 4, "tenant_gateway_share": 0.5})
    system = await InProcessSystem(secured).start(generator=False)  # jobs stay open, and so do their streams
    try:
        clients = {tenant: httpx.AsyncClient(base_url=system.base_url, timeout=30,
                                             headers={"Authorization": f"Bearer {key}"})
                   for tenant, key in keys.items()}
        endpoints = {}
        for tenant, client in clients.items():
            template_id = await create_template(client, scenario_document)
            ids = [p["id"] for p in await create_personas(client, template_id, 1)]
            endpoints[tenant] = (await start_job(client, template_id, cycle_modes(ids)))["sse_endpoint"]
        acme = clients["acme"]
        streams = _capacity(system).sse_streams
        async with AsyncExitStack() as held:
            await _open(acme, endpoints["acme"], held)
            async with AsyncExitStack() as second:
                await _open(acme, endpoints["acme"], second)  # its share: 2 of 4
                refused = await acme.get(endpoints["acme"])
                assert refused.status_code == 429, refused.text
                assert refused.json()["code"] == "gateway_share_exceeded"
                assert refused.json()["field"] == "gateway_share" and refused.headers["Retry-After"].isdigit()
                # the gateway still has room for others; a stream token alone names its tenant
                anonymous = await held.enter_async_context(httpx.AsyncClient(base_url=system.base_url, timeout=30))
                await _open(anonymous, endpoints["globex"], held)
                assert streams.by_tenant == {"acme": 2, "globex": 1}

            async def acme_gave_one_back() -> bool:
                return streams.by_tenant["acme"] == 1

            await eventually(acme_gave_one_back, what="acme's second stream given back")
            await _open(acme, endpoints["acme"], held)
        await _given_back(streams, "SSE stream")
        assert streams.by_tenant == {}  # no tenant is remembered once it holds nothing
    finally:
        for client in clients.values():
            await client.aclose()
        await system.close()
