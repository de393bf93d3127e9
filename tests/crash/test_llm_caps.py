"""Two generator processes together never exceed the LLM caps (real processes, real HTTP)."""

from __future__ import annotations

import httpx
import pytest

from tests.crash.harness import Deployment
from tests.flows import create_personas, create_template, cycle_modes, start_job
from tests.sse_client import read_sse

pytestmark = pytest.mark.timeout(90)


async def _run(tmp_path, llm_url: str, document: str, personas: int, **env: str) -> Deployment:
    """Two generators, a projector and a gateway against ``llm_url``: one job of ``personas``
    personas to its end. Returns the (stopped) deployment, whose logs stay readable."""
    d = Deployment(tmp_path, OPENAI_BASE_URL=llm_url, OPENAI_API_KEY="k", **env)
    try:
        for _ in range(2):
            d.start("generator")
        d.start("projector")
        _, url = d.start_gateway()
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            template_id = await create_template(client, document)
            ids = []
            for count in _persona_batches(personas):
                ids += [p["id"] for p in await create_personas(client, template_id, count)]
            job = await start_job(client, template_id, cycle_modes(ids))
            results = (await read_sse(client, job["sse_endpoint"])).messages[-1].data["results"]
    finally:
        d.close()
    assert results["successful"] == personas
    return d


def _persona_batches(personas: int) -> list[int]:
    return [10] * (personas // 10) + [personas % 10] * bool(personas % 10)


def _gateway_calls(personas: int) -> int:
    """The LLM calls the gateway made: the template analysis and one per persona batch."""
    return 1 + len(_persona_batches(personas))


def _stats(llm_url: str) -> dict:
    return httpx.get(llm_url.removesuffix("/v1") + "/admin/stats").json()


async def test_global_concurrency_cap_holds_across_two_generators(tmp_path, llm_process, scenario_document):
    llm = llm_process(latency_ms=250)
    await _run(tmp_path, llm, scenario_document, 16, PROMPTGEN_LLM_CONCURRENCY="3", PROMPTGEN_WORKER_CONCURRENCY="8")
    stats = _stats(llm)
    chat_calls = stats["requests"] - _gateway_calls(16)
    assert chat_calls == 16
    assert stats["max_in_flight"] <= 3  # each process alone would allow 8


async def test_requests_per_minute_cap_holds_across_two_generators(tmp_path, llm_process, scenario_document):
    llm = llm_process(latency_ms=20)
    # a small per-process concurrency, so both processes take work
    d = await _run(tmp_path, llm, scenario_document, 30, PROMPTGEN_LLM_RPM="600", PROMPTGEN_WORKER_CONCURRENCY="4")
    served = _generator_calls(d)
    assert len(served) == 2 and sum(served.values()) == 30, served
    started = sorted(_stats(llm)["started"])[_gateway_calls(30):]  # the generators' calls
    assert len(started) == 30
    # 600 per minute is one call per 0.1 s, whichever process makes it: one shared budget
    # spreads the 30 calls over 29 intervals (2.9 s); a budget per process would let the two
    # finish in about half that, and no cap sends them all within a few tens of ms. Measured
    # where the calls arrive, so a process the machine stalls may send a few calls together:
    # the span, not the busiest window, is the steady measure.
    assert started[-1] - started[0] >= 2.3, started
    busiest = max(sum(1 for t in started if s <= t < s + 1.0) for s in started)
    assert busiest <= 20, (busiest, started)


def _generator_calls(d: Deployment) -> dict[str, int]:
    """How many personas each generator process generated, from its logs."""
    return {svc.name: n for svc in d.services if svc.command == "generator"
            if (n := sum('"persona_generated"' in line for line in svc.lines()))}
