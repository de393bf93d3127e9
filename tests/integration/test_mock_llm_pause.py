"""The test LLM can hold every answer while a benchmark connects its clients: a call made while
it is paused is answered only after it resumes, and none is lost."""

from __future__ import annotations

import asyncio

import httpx

from tests.waiting import eventually

CHAT = {"model": "mock-llm", "messages": [{"role": "user", "content": "hello"}]}


async def test_a_paused_llm_answers_once_resumed(mock_llm):
    admin = mock_llm.base_url.removesuffix("/v1")
    async with httpx.AsyncClient(timeout=30) as client:
        assert (await client.post(f"{admin}/admin/pause")).json() == {"paused": True}
        calls = [asyncio.create_task(client.post(f"{mock_llm.base_url}/chat/completions", json=CHAT))
                 for _ in range(3)]

        async def all_waiting() -> bool:
            return (await client.get(f"{admin}/admin/stats")).json()["in_flight"] == 3

        await eventually(all_waiting, what="three calls held by the paused LLM")
        assert not any(c.done() for c in calls)
        assert (await client.post(f"{admin}/admin/resume")).json() == {"paused": False}
        answers = await asyncio.wait_for(asyncio.gather(*calls), 30)
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert all(a.json()["choices"][0]["message"]["content"] for a in answers)


async def test_new_rates_change_only_what_they_name(mock_llm):
    """`POST /admin/config {"error_rate": 0}` put every other setting back to its default (the
    latency given at start included)."""
    from services.testing.mock_llm import MockLLMConfig

    mock_llm.configure(MockLLMConfig(latency_ms=250, error_rate=0.5))
    admin = mock_llm.base_url.removesuffix("/v1")
    async with httpx.AsyncClient(timeout=30) as client:
        answer = (await client.post(f"{admin}/admin/config", json={"error_rate": 0})).json()
    assert (answer["latency_ms"], answer["error_rate"]) == (250, 0)
    mock_llm.configure(MockLLMConfig())
