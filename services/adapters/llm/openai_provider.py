"""The OpenAI provider: the official client against any OpenAI-compatible server.

One ``AsyncOpenAI`` per process. The client's own retries are off: failures are
classified here (:func:`classify`) and retried by the caller with backoff that
honours the server's retry-after.
"""

from __future__ import annotations

import json
from typing import Any

import openai
from openai import AsyncOpenAI
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


def classify(exc: Exception) -> LLMError:
    """Map a client exception to a stable error code, and whether to retry."""
    if isinstance(exc, LLMError):
        return exc
    if isinstance(exc, openai.APITimeoutError):
        return LLMError("llm_timeout", "LLM timeout: the model did not answer in time", retryable=True)
    if isinstance(exc, openai.APIConnectionError):
        return LLMError("llm_unavailable", f"LLM unreachable: {exc}", retryable=True)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        body = exc.body if isinstance(exc.body, dict) else {}
        code = str(body.get("code") or body.get("type") or "")
        after = _retry_after(exc.response.headers if exc.response is not None else None)
        detail = getattr(exc, "message", str(exc))
        if status == 429 and "insufficient_quota" in (code + detail):
            return LLMError("llm_quota", f"LLM quota exhausted: {detail}")
        if status == 429:
            return LLMError("llm_rate_limited", f"LLM rate limited: {detail}", retryable=True, retry_after=after)
        if status in (401, 403):
            return LLMError("llm_auth", f"LLM rejected the credentials ({status}): {detail}")
        if status in (408, 409):
            return LLMError("llm_timeout" if status == 408 else "llm_unavailable",
                            f"LLM error {status}: {detail}", retryable=True, retry_after=after)
        if status >= 500:
            return LLMError("llm_unavailable", f"LLM server error {status}: {detail}", retryable=True,
                            retry_after=after)
        return LLMError("llm_rejected", f"LLM rejected the request ({status}): {detail}")
    return LLMError("llm_unavailable", f"LLM call failed: {exc.__class__.__name__}: {exc}", retryable=True)


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
            http_client=http_client,
        )

    async def _complete(self, msgs: list[Message], *, json_mode: bool) -> GeneratedText:
        kwargs: dict[str, Any] = {"response_format": {"type": "json_object"}} if json_mode else {}
        try:
            resp = await self.client.chat.completions.create(
                model=self.model, messages=msgs, temperature=self.temperature, **kwargs
            )
        except Exception as exc:
            raise classify(exc) from exc
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
            raise LLMError(
                "invalid_output", f"LLM answer is not a valid {model.__name__}: {str(exc)[:300]}"
            ) from exc

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
        except Exception as exc:
            raise classify(exc) from exc

    async def aclose(self) -> None:
        await self.client.close()
