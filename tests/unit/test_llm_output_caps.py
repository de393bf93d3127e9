"""An LLM answer that could not be stored is an ``invalid_output`` failure, never a poison event.

The OpenAI provider validates template analyses and persona drafts with the same models, and
so the same caps, as the gateway's requests; the LLM is faked at the HTTP layer.
"""

from __future__ import annotations

import functools
import json

import httpx
import pytest
from pydantic import SecretStr

from contracts.domain import TemplateData
from services.adapters.llm.base import LLMError
from services.adapters.llm.openai_provider import OpenAIProvider
from services.runtime.settings import Settings

TEMPLATE = TemplateData(title="Renewal", description="A rep renews a contract.")


def _persona(**changes) -> dict:
    return {"name": "Omar Smith", "age": 38, "role": "Buyer", "archetype": "SKEPTIC",
            "detail_categories": {"background": "procurement lead"}, "conversation_rules": {}, **changes}


def _provider(answer: dict) -> OpenAIProvider:
    def reply(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={
            "id": "c1", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": json.dumps(answer)}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })

    settings = Settings(openai_base_url="http://llm.test/v1", openai_api_key=SecretStr("k"), provider="openai")
    return OpenAIProvider(settings, http_client=httpx.AsyncClient(transport=httpx.MockTransport(reply)))


@pytest.mark.parametrize("persona", [
    _persona(detail_categories={"a\x00b": 1}),
    _persona(conversation_rules={"$where": "sleep(1000)"}),
    _persona(detail_categories={"history": functools.reduce(lambda v, _: [v], range(220), 1)}),
    _persona(detail_categories={"v.1": "dotted"}),
    _persona(name="x" * 5000),
], ids=["nul-key", "dollar-key", "220-deep", "dotted-key", "long-name"])
async def test_a_persona_draft_that_cannot_be_stored_is_invalid_output(persona):
    provider = _provider({"personas": [persona]})
    with pytest.raises(LLMError) as failed:
        await provider.generate_personas(TEMPLATE, "assess_mode_character", ["p1"])
    assert failed.value.code == "invalid_output" and not failed.value.retryable
    await provider.aclose()


async def test_a_template_analysis_with_unencodable_text_is_invalid_output():
    provider = _provider({"title": "Renewal \ud800", "description": "d"})  # json.dumps escapes it
    with pytest.raises(LLMError) as failed:
        await provider.analyze_scenario("# Renewal")
    assert failed.value.code == "invalid_output"
    await provider.aclose()


async def test_a_storable_answer_passes():
    provider = _provider({"personas": [_persona()]})
    [draft] = await provider.generate_personas(TEMPLATE, "assess_mode_character", ["p1"])
    assert draft.detail_categories == {"background": "procurement lead"}
    await provider.aclose()
