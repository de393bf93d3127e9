"""An LLM answer that could not be stored is an ``invalid_output`` failure, never a poison event.

The OpenAI provider validates template analyses and persona drafts with the same models, and
so the same caps, as the gateway's requests; the LLM is a loopback HTTP server answering as each test says.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web
from pydantic import SecretStr

from contracts.domain import TemplateData
from services.adapters.llm.base import LLMError
from services.adapters.llm.openai_provider import OpenAIProvider
from services.runtime.settings import Settings
from tests.llm_server import completion, llm_answering

TEMPLATE = TemplateData(title="Renewal", description="A rep renews a contract.")


def _persona(**changes) -> dict:
    return {"name": "Omar Smith", "age": 38, "role": "Buyer", "archetype": "SKEPTIC",
            "detail_categories": {"background": "procurement lead"}, "conversation_rules": {}, **changes}


@asynccontextmanager
async def _provider(answer: dict) -> AsyncIterator[OpenAIProvider]:
    async def reply(request: web.Request) -> web.Response:
        return web.json_response(completion(json.dumps(answer)))

    async with llm_answering(reply) as url:
        provider = OpenAIProvider(Settings(openai_base_url=url, openai_api_key=SecretStr("k"), provider="openai"))
        try:
            yield provider
        finally:
            await provider.aclose()


@pytest.mark.parametrize("persona", [
    _persona(detail_categories={"a\x00b": 1}),
    _persona(conversation_rules={"$where": "sleep(1000)"}),
    _persona(detail_categories={"history": functools.reduce(lambda v, _: [v], range(220), 1)}),
    _persona(detail_categories={"v.1": "dotted"}),
    _persona(name="x" * 5000),
], ids=["nul-key", "dollar-key", "220-deep", "dotted-key", "long-name"])
async def test_a_persona_draft_that_cannot_be_stored_is_invalid_output(persona):
    async with _provider({"personas": [persona]}) as provider:
        with pytest.raises(LLMError) as failed:
            await provider.generate_personas(TEMPLATE, "assess_mode_character", ["p1"])
    assert failed.value.code == "invalid_output" and not failed.value.retryable


async def test_a_template_analysis_with_unencodable_text_is_invalid_output():
    async with _provider({"title": "Renewal \ud800", "description": "d"}) as provider:  # json.dumps escapes it
        with pytest.raises(LLMError) as failed:
            await provider.analyze_scenario("# Renewal")
    assert failed.value.code == "invalid_output"


async def test_a_storable_answer_passes():
    async with _provider({"personas": [_persona()]}) as provider:
        [draft] = (await provider.generate_personas(TEMPLATE, "assess_mode_character", ["p1"])).value
    assert draft.detail_categories == {"background": "procurement lead"}
