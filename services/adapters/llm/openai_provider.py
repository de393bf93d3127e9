"""The OpenAI provider: the official client against any OpenAI-compatible server.

One ``AsyncOpenAI`` per process. The client's own retries are off: failures are
classified here (:func:`classify`) and retried by the caller with backoff that
honours the server's retry-after.

Its HTTP transport is aiohttp (the client's ``DefaultAioHttpClient``, which the
openai library recommends for many concurrent calls): with 64 calls in flight the
default transport's connection pool cost about a third of the generator's CPU.
"""

from __future__ import annotations

import json
import re
from typing import Any

import aiohttp
import openai
from openai import AsyncOpenAI, DefaultAioHttpClient
from openai.types.chat import ChatCompletion
from pydantic import BaseModel, ValidationError

from contracts.domain import PersonaDraft, TemplateData, TokenUsage
from services.adapters.llm import messages
from services.adapters.llm.base import GeneratedText, LLMError, Message, PromptBrief
from services.runtime.settings import Settings


class _PersonaList(BaseModel):
    personas: list[PersonaDraft]


def _retry_after(headers: Any) -> float | None:
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        try:
            return float(value)
        except ValueError:
            return None
    return None


# An error's code or type as a server names it (``invalid_api_key``, ``rate_limit_exceeded``): passed
# on when it looks like one. Nothing else of an upstream error is: its message can hold the prompt, a
# key or an internal URL, and it would reach the event log, the job's results, SSE and the logs.
_NAMED = re.compile(r"[a-z][a-z0-9_]{0,63}")


def _named(value: object) -> str | None:
    return value if isinstance(value, str) and _NAMED.fullmatch(value) else None


def _status_summary(exc: openai.APIStatusError) -> str:
    """``HTTP 429, rate_limit_exceeded``: the status and the error's code or type, in our words."""
    kind = _named(exc.code) or _named(exc.type)
    return f"HTTP {exc.status_code}" + (f", {kind}" if kind else "")


def _lost_connection(exc: BaseException) -> BaseException | None:
    """The aiohttp error behind ``exc`` when a connection was refused or dropped: the aiohttp
    transport reports every such error as a connect timeout, but the LLM was unreachable, not slow."""
    cause = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, aiohttp.ClientConnectionError) and not isinstance(cause, TimeoutError):
        return cause
    return None


def classify(exc: Exception) -> LLMError:
    """Map a client exception to a stable error code, whether to retry, and a short summary
    of our own (never the server's message)."""
    if isinstance(exc, LLMError):
        return exc
    if isinstance(exc, openai.APITimeoutError) and (lost := _lost_connection(exc)) is not None:
        return LLMError("llm_unavailable", f"LLM unreachable ({lost.__class__.__name__})", retryable=True)
    if isinstance(exc, openai.APITimeoutError):
        return LLMError("llm_timeout", "LLM timeout: the model did not answer in time", retryable=True)
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__.__class__.__name__ if exc.__cause__ is not None else "no connection"
        return LLMError("llm_unavailable", f"LLM unreachable ({cause})", retryable=True)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        after = _retry_after(exc.response.headers if exc.response is not None else None)
        summary = _status_summary(exc)
        if status == 429 and "insufficient_quota" in f"{exc.code} {exc.type} {exc.message}":
            return LLMError("llm_quota", f"LLM quota exhausted ({summary})")
        if status == 429:
            return LLMError("llm_rate_limited", f"LLM rate limited ({summary})", retryable=True, retry_after=after)
        if status in (401, 403):
            return LLMError("llm_auth", f"LLM rejected the credentials ({summary})")
        if status in (408, 409):
            return LLMError("llm_timeout" if status == 408 else "llm_unavailable",
                            f"LLM error ({summary})", retryable=True, retry_after=after)
        if status >= 500:
            return LLMError("llm_unavailable", f"LLM server error ({summary})", retryable=True,
                            retry_after=after)
        return LLMError("llm_rejected", f"LLM rejected the request ({summary})")
    return LLMError("llm_unavailable", f"LLM call failed ({exc.__class__.__name__})", retryable=True)


def _invalid(exc: json.JSONDecodeError | ValidationError) -> str:
    """What is wrong with an answer, by place and kind, without quoting it."""
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON ({exc.msg} at character {exc.pos})"
    places = [f"{'.'.join(str(p)[:32] for p in e['loc']) or 'answer'} ({e['type']})" for e in exc.errors()[:5]]
    more = f" and {exc.error_count() - 5} more" if exc.error_count() > 5 else ""
    return f"{exc.error_count()} invalid: {', '.join(places)}{more}"


class OpenAIProvider:
    name = "openai"

    def __init__(self, settings: Settings, *, http_client: Any = None) -> None:
        self.model = settings.model
        self.temperature = settings.llm_temperature
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else "not-needed"
        self.client = AsyncOpenAI(
            api_key=key,
            base_url=settings.openai_base_url,
            timeout=settings.llm_timeout_seconds,
            max_retries=0,
            http_client=http_client if http_client is not None else DefaultAioHttpClient(),
        )

    async def _chat_completion(self, body: dict[str, Any]) -> ChatCompletion:
        """``POST /chat/completions`` through the client's documented ``post`` for requests of
        one's own: our messages are already plain JSON, so ``chat.completions.create``'s
        conversion of every parameter through its typed dictionaries (an eighth of the
        generator's CPU per call) would change nothing. Errors, timeouts and the parsed
        ``ChatCompletion`` are the client's, as with ``create``."""
        return await self.client.post("/chat/completions", body=body, cast_to=ChatCompletion)

    async def _complete(self, msgs: list[Message], *, json_mode: bool) -> GeneratedText:
        body: dict[str, Any] = {"model": self.model, "messages": msgs, "temperature": self.temperature}
        if json_mode:
            body["response_format"] = {"type": "json_object"}
        try:
            resp = await self._chat_completion(body)
        except Exception as exc:  # noqa: BLE001 - every failure is classified; not chained: it holds the server's message
            raise classify(exc) from None
        text = (resp.choices[0].message.content or "").strip() if resp.choices else ""
        if not text:
            raise LLMError("invalid_output", "LLM answered with empty content", retryable=True)
        usage = TokenUsage(
            prompt_tokens=resp.usage.prompt_tokens if resp.usage else 0,
            completion_tokens=resp.usage.completion_tokens if resp.usage else 0,
        )
        return GeneratedText(text=text, model=resp.model or self.model, usage=usage)

    async def _structured(self, msgs: list[Message], model: type[BaseModel]) -> BaseModel:
        out = await self._complete(msgs, json_mode=True)
        try:
            return model.model_validate(json.loads(out.text))
        except (json.JSONDecodeError, ValidationError) as exc:
            raise LLMError("invalid_output", f"LLM answer is not a valid {model.__name__}: {_invalid(exc)}") from None

    async def analyze_scenario(self, document: str) -> TemplateData:
        return await self._structured(messages.analyze_scenario_messages(document), TemplateData)  # type: ignore[return-value]

    async def generate_personas(
        self, template: TemplateData, persona_type: str, seeds: list[str]
    ) -> list[PersonaDraft]:
        msgs = messages.generate_personas_messages(template, persona_type, len(seeds))
        result = await self._structured(msgs, _PersonaList)
        drafts = result.personas  # type: ignore[attr-defined]
        if len(drafts) < len(seeds):
            raise LLMError("invalid_output", f"LLM returned {len(drafts)} personas, {len(seeds)} asked")
        return drafts[: len(seeds)]

    async def write_system_prompt(self, brief: PromptBrief) -> GeneratedText:
        return await self._complete(brief.messages, json_mode=False)

    async def check(self) -> None:
        """List the models: a cheap call that proves the server answers and takes the key."""
        try:
            await self.client.models.list()
        except Exception as exc:  # noqa: BLE001 - every failure is classified; not chained: it holds the server's message
            raise classify(exc) from None

    async def aclose(self) -> None:
        await self.client.close()
