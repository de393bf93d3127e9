"""An LLM server's error message stays in the provider adapter: the LLMError it becomes says
the status and the error's code in our words, and carries nothing of the server's answer,
not even in its traceback (which a log line's exc_info or a trace's exception event prints).
The server is faked at the HTTP layer (httpx.MockTransport) under the real openai client."""

from __future__ import annotations

import json
import traceback

import aiohttp
import httpx
import pytest
from pydantic import SecretStr

from services.adapters.llm.base import LLMError
from services.adapters.llm.openai_provider import OpenAIProvider
from services.runtime.settings import Settings

CANARY = "CANARY-5e1f sk-live-abcdef0123456789 https://llm-internal.corp.example/v1"


def _provider(reply) -> OpenAIProvider:
    settings = Settings(openai_base_url="http://llm.test/v1", openai_api_key=SecretStr("k"), provider="openai")
    return OpenAIProvider(settings, http_client=httpx.AsyncClient(transport=httpx.MockTransport(reply)))


def _everything_said(error: LLMError) -> str:
    return "".join(traceback.format_exception(error)) + repr(error.__dict__)


@pytest.mark.parametrize("status,kind,code,expected", [
    (400, "invalid_request_error", "content_filter",
     "llm_rejected: LLM rejected the request (HTTP 400, content_filter)"),
    (401, "invalid_request_error", "invalid_api_key",
     "llm_auth: LLM rejected the credentials (HTTP 401, invalid_api_key)"),
    (429, "requests", "rate_limit_exceeded", "llm_rate_limited: LLM rate limited (HTTP 429, rate_limit_exceeded)"),
    (429, "insufficient_quota", "insufficient_quota", "llm_quota: LLM quota exhausted (HTTP 429, insufficient_quota)"),
    (503, "server_error", None, "llm_unavailable: LLM server error (HTTP 503, server_error)"),
    (500, CANARY, CANARY, "llm_unavailable: LLM server error (HTTP 500)"),  # a code that is no identifier: left out
])
async def test_a_server_error_becomes_our_summary_and_nothing_of_its_body(status, kind, code, expected):
    provider = _provider(lambda request: httpx.Response(
        status, json={"error": {"message": f"refused: {CANARY}", "type": kind, "param": None, "code": code}}))
    with pytest.raises(LLMError) as failed:
        await provider.analyze_scenario("# Renewal")
    assert f"{failed.value.code}: {failed.value.message}" == expected
    said = _everything_said(failed.value)
    assert "CANARY" not in said and "llm-internal" not in said and "sk-live" not in said
    await provider.aclose()


async def test_an_unreachable_server_is_named_by_the_error_class_alone():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot reach {CANARY}")

    provider = _provider(refuse)
    with pytest.raises(LLMError) as failed:
        await provider.check()
    assert (failed.value.code, failed.value.message) == ("llm_unavailable", "LLM unreachable (ConnectError)")
    assert "CANARY" not in _everything_said(failed.value)
    await provider.aclose()


@pytest.mark.parametrize("cause,expected", [
    (aiohttp.ServerDisconnectedError(), ("llm_unavailable", "LLM unreachable (ServerDisconnectedError)")),
    (aiohttp.SocketTimeoutError(), ("llm_timeout", "LLM timeout: the model did not answer in time")),
])
async def test_the_aiohttp_transports_connect_timeout_is_told_apart_from_a_lost_connection(cause, expected):
    # openai's aiohttp transport raises every aiohttp connection error as a connect timeout
    # (openai/_vendor/httpx_aiohttp/transport.py); what it wraps says which it was.
    def fail(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("mapped by the transport") from cause

    provider = _provider(fail)
    with pytest.raises(LLMError) as failed:
        await provider.check()
    assert (failed.value.code, failed.value.message) == expected
    await provider.aclose()


async def test_an_unusable_answer_is_described_without_quoting_it():
    provider = _provider(lambda request: httpx.Response(200, json={
        "id": "c1", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": json.dumps({"title": 7, "notes": CANARY})}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }))
    with pytest.raises(LLMError) as failed:
        await provider.analyze_scenario("# Renewal")
    assert failed.value.code == "invalid_output"
    assert failed.value.message.startswith("LLM answer is not a valid TemplateData: ")
    assert "title (string_type)" in failed.value.message
    assert "CANARY" not in _everything_said(failed.value)
    await provider.aclose()
