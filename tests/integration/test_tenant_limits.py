"""Two gateways share each tenant's limits through a real nats-server's key-value bucket:
requests sent to both at once never pass more than the limit between them (compare-and-set),
and a refused request publishes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import httpx
import pytest_asyncio
from asgi_lifespan import LifespanManager
from pydantic import SecretStr

from services.adapters.api_keys import SCOPES, ApiKeys
from services.gateway.app import create_app
from tests.conftest import InProcessSystem
from tests.flows import create_personas, create_template, cycle_modes


@pytest_asyncio.fixture
async def two_gateways(settings, models, event_log) -> AsyncIterator[Callable[..., Awaitable[list[httpx.AsyncClient]]]]:
    """``start(**limits)``: a projector (no generator: a job stays in flight), one gateway over HTTP
    and a second over ASGI, with these limits; a client for each, holding tenant acme's key."""
    key = (await (await ApiKeys.open(event_log)).create("acme", list(SCOPES)))[1]
    headers = {"Authorization": f"Bearer {key}"}
    async with AsyncExitStack() as stack:

        async def start(**limits: int) -> list[httpx.AsyncClient]:
            secured = settings.model_copy(update={"auth": "required", "stream_token_secret": SecretStr("s3cret"),
                                                  **limits})
            system = await InProcessSystem(secured).start(generator=False)
            stack.push_async_callback(system.close)
            second = await stack.enter_async_context(LifespanManager(create_app(secured)))
            return [
                await stack.enter_async_context(httpx.AsyncClient(base_url=system.base_url, timeout=30,
                                                                  headers=headers)),
                await stack.enter_async_context(httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=second.app), base_url="http://localhost", timeout=30,
                    headers=headers)),
            ]

        yield start


async def test_racing_gateways_never_pass_more_requests_than_the_limit(two_gateways, event_log,
                                                                       scenario_document) -> None:
    a, b = await two_gateways(tenant_requests_per_minute=4)
    body = {"scenario_document": scenario_document}
    answers = await asyncio.gather(*(c.post("/scenario/analyze-scenario-enhanced", json=body)
                                     for c in (a, b, a, b, a, b)))
    assert sorted(r.status_code for r in answers) == [201] * 4 + [429] * 2, [r.text for r in answers]
    for r in answers:
        if r.status_code == 429:
            assert r.json()["code"] == "requests_per_minute_exceeded" and int(r.headers["Retry-After"]) >= 1
    created = [r.json()["template_id"] for r in answers if r.status_code == 201]
    stored = [s async for s in event_log.read("promptgen.template.*.created")]
    assert sorted(s.event.template_id for s in stored) == sorted(created)  # a refused request published nothing


async def test_racing_gateways_never_start_more_jobs_than_the_limit(two_gateways, event_log,
                                                                    scenario_document) -> None:
    a, b = await two_gateways(tenant_requests_per_minute=0, tenant_jobs_in_flight=2)
    template_id = await create_template(a, scenario_document)
    personas = [p["id"] for p in await create_personas(b, template_id, 3)]
    bodies = [{"template_id": template_id, "persona_ids": [p], "mode_mapping": cycle_modes([p])} for p in personas]
    before = await event_log.last_seq()
    answers = await asyncio.gather(*(c.post("/scenario/v2/generate-final-prompts", json=body)
                                     for c, body in zip((a, b, a, b, a, b), bodies * 2, strict=True)))
    assert sorted(r.status_code for r in answers) == [202] * 2 + [429] * 4, [r.text for r in answers]
    assert {r.json()["code"] for r in answers if r.status_code == 429} == {"jobs_in_flight_exceeded"}
    started = {r.json()["job_id"] for r in answers if r.status_code == 202}
    requested = [s async for s in event_log.read("promptgen.job.*.requested", before + 1)]
    assert {s.event.job_id for s in requested} == started
