"""Two generator processes together never exceed the LLM caps (real processes, real HTTP)."""

from __future__ import annotations

import httpx
import pytest

from tests.crash.harness import Deployment
from tests.flows import create_personas, create_template, cycle_modes, start_job
from tests.sse_client import read_sse

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


async def _run(d: Deployment, document: str, personas: int) -> dict:
    for _ in range(2):
        d.start("generator")
    d.start("projector")
    _, url = d.start_gateway()
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        template_id = await create_template(client, document)
        ids = [p["id"] for p in await create_personas(client, template_id, personas)]
        job = await start_job(client, template_id, cycle_modes(ids))
        results = (await read_sse(client, job["sse_endpoint"])).messages[-1].data["results"]
    assert results["successful"] == personas
    return results


def _stats(llm_url: str) -> dict:
    return httpx.get(llm_url.removesuffix("/v1") + "/admin/stats").json()


async def test_global_concurrency_cap_holds_across_two_generators(tmp_path, llm_process, scenario_document):
    llm = llm_process(latency_ms=250)
    d = Deployment(tmp_path, OPENAI_BASE_URL=llm, OPENAI_API_KEY="k", PROMPTGEN_LLM_CONCURRENCY="3",
                   PROMPTGEN_WORKER_CONCURRENCY="8")
    try:
        await _run(d, scenario_document, 16)
    finally:
        d.close()
    stats = _stats(llm)
    chat_calls = stats["requests"] - 2  # the template and the personas were made by the gateway
    assert chat_calls == 16
    assert stats["max_in_flight"] <= 3  # each process alone would allow 8


async def test_requests_per_minute_cap_holds_across_two_generators(tmp_path, llm_process, scenario_document):
    llm = llm_process(latency_ms=20)
    d = Deployment(tmp_path, OPENAI_BASE_URL=llm, OPENAI_API_KEY="k", PROMPTGEN_LLM_RPM="600")
    try:
        await _run(d, scenario_document, 20)
    finally:
        d.close()
    started = sorted(_stats(llm)["started"])[2:]  # the generators' calls
    assert len(started) == 20
    # 600 per minute is one call per 0.1 s, whichever process makes it. Measured where the
    # calls arrive: on this shared 2-core machine the test LLM's loop can stall and read two
    # calls together, so a window may hold 5 calls +1 at its boundary +1 from a stall; and
    # the 20 calls span at least 19 intervals. Uncapped, the two processes send all 20
    # within a few tens of milliseconds.
    interval = 60 / 600
    for window, cap in ((0.5, 7), (1.0, 12)):
        busiest = max(sum(1 for t in started if s <= t < s + window) for s in started)
        assert busiest <= cap, (window, busiest, started)
    assert started[-1] - started[0] >= 19 * interval - 0.15
