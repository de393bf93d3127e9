"""An LLM server's error message stays in the provider adapter: the LLMError it becomes says
the status and the error's code in our words, and carries nothing of the server's answer,
not even in its traceback (which a log line's exc_info or a trace's exception event prints).
The server is a loopback HTTP server answering as each test says (tests/llm_server.py)."""

from __future__ import annotations

import asyncio
import json
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web
from pydantic import SecretStr

from services.adapters.llm.base import LLMError
from services.adapters.llm.openai_provider import OpenAIProvider, proxy_for
from services.cli.embedded import free_port
from services.runtime.settings import Settings
from tests.llm_server import completion, llm_answering

CANARY = "CANARY-5e1f sk-live-abcdef0123456789 https://llm-internal.corp.example/v1"


def _settings(base_url: str, **changes) -> Settings:
    return Settings(openai_base_url=base_url, openai_api_key=SecretStr("k"), provider="openai", **changes)


@asynccontextmanager
async def _provider(handler, **changes) -> AsyncIterator[OpenAIProvider]:
    async with llm_answering(handler) as url:
        provider = OpenAIProvider(_settings(url, **changes))
        try:
            yield provider
        finally:
            await provider.aclose()


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
    async def refuse(request: web.Request) -> web.Response:
        return web.json_response(
            {"error": {"message": f"refused: {CANARY}", "type": kind, "param": None, "code": code}}, status=status)

    async with _provider(refuse) as provider:
        with pytest.raises(LLMError) as failed:
            await provider.analyze_scenario("# Renewal")
    assert f"{failed.value.code}: {failed.value.message}" == expected
    said = _everything_said(failed.value)
    assert "CANARY" not in said and "llm-internal" not in said and "sk-live" not in said


async def test_a_rate_limit_passes_on_the_servers_retry_after():
    async def busy(request: web.Request) -> web.Response:
        return web.json_response({"error": {"type": "requests"}}, status=429, headers={"retry-after-ms": "1500"})

    async with _provider(busy) as provider:
        with pytest.raises(LLMError) as failed:
            await provider.check()
    assert (failed.value.code, failed.value.retryable, failed.value.retry_after) == ("llm_rate_limited", True, 1.5)


async def test_an_unreachable_server_is_named_by_the_error_class_alone():
    provider = OpenAIProvider(_settings(f"http://127.0.0.1:{free_port()}/v1"))
    with pytest.raises(LLMError) as failed:
        await provider.check()
    await provider.aclose()
    assert (failed.value.code, failed.value.message) == ("llm_unavailable", "LLM unreachable (ClientConnectorError)")


async def test_a_dropped_connection_is_unavailable_and_a_silent_server_a_timeout():
    async def drop(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()  # no answer at all
        return web.Response()

    async with _provider(drop) as provider:
        with pytest.raises(LLMError) as failed:
            await provider.check()
    assert (failed.value.code, failed.value.message) == ("llm_unavailable", "LLM unreachable (ServerDisconnectedError)")

    async def silent(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response()

    async with _provider(silent, llm_timeout_seconds=0.2) as provider:
        with pytest.raises(LLMError) as failed:
            await provider.check()
    assert (failed.value.code, failed.value.message) == ("llm_timeout", "LLM timeout: the model did not answer in time")


@pytest.mark.parametrize("body,expected", [
    (b"<html>gateway</html>", "LLM answer is not JSON"),
    (json.dumps({"choices": []}).encode(), "LLM answered with empty content"),
    (json.dumps({"choices": [{"message": {"content": None}}], "usage": "many"}).encode(),
     "LLM answered with empty content"),
])
async def test_an_answer_of_another_shape_is_invalid_output_and_retried(body, expected):
    async def odd(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    async with _provider(odd) as provider:
        with pytest.raises(LLMError) as failed:
            await provider.analyze_scenario("# Renewal")
    assert (failed.value.code, failed.value.message, failed.value.retryable) == ("invalid_output", expected, True)


async def test_a_request_says_the_model_the_messages_and_the_key():
    seen: list[tuple[str, str, dict]] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers["Authorization"], await request.json()))
        return web.json_response(completion('{"title": "Renewal", "description": "A rep renews."}'))

    async with _provider(answer) as provider:
        template = (await provider.analyze_scenario("# Renewal")).value
    assert template.title == "Renewal"
    [(path, auth, body)] = seen
    assert (path, auth) == ("/v1/chat/completions", "Bearer k")
    assert body["model"] == provider.model and body["response_format"] == {"type": "json_object"}
    assert body["messages"][-1]["role"] == "user" and "# Renewal" in body["messages"][-1]["content"]


async def test_an_unusable_answer_is_described_without_quoting_it():
    async def answer(request: web.Request) -> web.Response:
        return web.json_response(completion(json.dumps({"title": 7, "notes": CANARY})))

    async with _provider(answer) as provider:
        with pytest.raises(LLMError) as failed:
            await provider.analyze_scenario("# Renewal")
    assert failed.value.code == "invalid_output"
    assert failed.value.message.startswith("LLM answer is not a valid TemplateData: ")
    assert "title (string_type)" in failed.value.message
    assert "CANARY" not in _everything_said(failed.value)


@pytest.mark.parametrize("env,expected", [
    ({}, None),
    ({"HTTPS_PROXY": "http://proxy.corp:3128"}, "http://proxy.corp:3128"),
    ({"https_proxy": "http://proxy.corp:3128", "NO_PROXY": "llm.corp"}, None),
    ({"HTTP_PROXY": "http://proxy.corp:3128"}, None),  # for http:// only
])
def test_the_proxy_is_the_one_the_environment_names_for_the_llm(monkeypatch, env, expected):
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY",
                 "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert proxy_for("https://llm.corp/v1") == expected


async def test_requests_go_through_the_proxy_the_environment_names(monkeypatch):
    seen: list[str] = []

    async def proxy(request: web.Request) -> web.Response:  # a forward proxy answering itself
        seen.append(str(request.url))
        return web.json_response({"data": []})

    async with llm_answering(proxy) as proxy_url:
        monkeypatch.setenv("HTTP_PROXY", proxy_url.removesuffix("/v1"))
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        provider = OpenAIProvider(_settings("http://llm.invalid/v1"))
        await provider.check()
        await provider.aclose()
    assert seen == ["http://llm.invalid/v1/models"]


@pytest.mark.parametrize("headers,expected", [
    ({"retry-after": "inf"}, None),
    ({"retry-after": "nan", "retry-after-ms": "nan"}, None),
    ({"retry-after": "86400"}, 300.0),  # a day: capped
    ({"retry-after-ms": "-5"}, 0.0),
    ({"retry-after-ms": "soon", "retry-after": "2"}, 2.0),
])
async def test_a_servers_retry_after_is_followed_only_when_finite_and_up_to_a_cap(headers, expected):
    async def busy(request: web.Request) -> web.Response:
        return web.json_response({"error": {"type": "requests"}}, status=429, headers=headers)

    async with _provider(busy) as provider:
        with pytest.raises(LLMError) as failed:
            await provider.check()
    assert (failed.value.code, failed.value.retry_after) == ("llm_rate_limited", expected)


async def test_an_error_without_the_error_wrapper_is_read_too():
    async def quota(request: web.Request) -> web.Response:  # some servers send the fields at the top
        return web.json_response({"type": "insufficient_quota", "message": "pay up", "code": None}, status=429)

    async with _provider(quota) as provider:
        with pytest.raises(LLMError) as failed:
            await provider.check()
    assert (failed.value.code, failed.value.retryable) == ("llm_quota", False)


async def test_a_redirect_is_not_followed():
    elsewhere: list[str] = []

    async def moved(request: web.Request) -> web.Response:
        if request.path.startswith("/elsewhere"):
            elsewhere.append(request.path)
            return web.json_response(completion("followed"))
        raise web.HTTPTemporaryRedirect("/elsewhere/chat/completions")

    async with _provider(moved) as provider:
        with pytest.raises(LLMError) as failed:
            await provider.analyze_scenario("# Renewal")
    assert failed.value.code == "llm_rejected" and "HTTP 307" in failed.value.message
    assert elsewhere == []  # the prompt went nowhere else


async def test_an_answer_too_large_is_refused_and_a_deep_one_is_not_json(monkeypatch):
    from services.adapters.llm import openai_provider

    monkeypatch.setattr(openai_provider, "MAX_ANSWER_BYTES", 1 << 20)

    async def huge(request: web.Request) -> web.Response:
        return web.json_response(completion("x" * (2 << 20)))

    async with _provider(huge) as provider:
        with pytest.raises(LLMError) as failed:
            await provider.analyze_scenario("# Renewal")
    assert (failed.value.code, failed.value.message) == ("invalid_output", "LLM answer larger than 1 MiB")

    async def deep(request: web.Request) -> web.Response:
        return web.Response(body=b"[" * 100_000 + b"]" * 100_000, status=401, content_type="application/json")

    async with _provider(deep) as provider:
        with pytest.raises(LLMError) as failed:
            await provider.check()
    assert failed.value.code == "llm_auth"  # its status still says what it was


async def test_nothing_of_an_answer_is_kept_in_the_errors_context():
    async def garbage(request: web.Request) -> web.Response:
        return web.Response(body=f"not json {CANARY}".encode(), content_type="application/json")

    async def invalid(request: web.Request) -> web.Response:
        return web.json_response(completion('{"title": "' + CANARY + '" '))  # cut short

    for handler in (garbage, invalid):
        async with _provider(handler) as provider:
            with pytest.raises(LLMError) as failed:
                await provider.analyze_scenario("# Renewal")
        chain, error = [], failed.value
        while error is not None:
            chain.append(repr(error) + repr(getattr(error, "__dict__", {})) + repr(getattr(error, "doc", "")))
            error = error.__cause__ or error.__context__
        assert "CANARY" not in "".join(chain), chain


async def test_an_answers_model_name_and_token_counts_are_believed_only_when_plausible():
    answer = completion("a prompt")
    answer["model"] = "x\n" * 100
    answer["usage"] = {"prompt_tokens": 2**70, "completion_tokens": 12}

    async def odd(request: web.Request) -> web.Response:
        return web.json_response(answer)

    async with _provider(odd) as provider:
        text = await provider._complete([{"role": "user", "content": "hi"}], json_mode=False)
    assert (text.model, text.usage.prompt_tokens, text.usage.completion_tokens) == (provider.model, 0, 12)


async def test_org_and_project_are_sent_and_a_closed_provider_opens_nothing():
    seen: list[tuple[str | None, str | None]] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append((request.headers.get("OpenAI-Organization"), request.headers.get("OpenAI-Project")))
        return web.json_response({"data": []})

    async with _provider(answer, openai_organization="org-1", openai_project="proj-1") as provider:
        await provider.check()
        await provider.aclose()
        with pytest.raises(LLMError) as failed:
            await provider.check()
    assert seen == [("org-1", "proj-1")]
    assert (failed.value.code, failed.value.retryable) == ("llm_unavailable", True)
