"""The OpenAI provider: the chat completions API of any OpenAI-compatible server.

Two requests are all it makes: ``POST /chat/completions`` and ``GET /models`` (the health
check), over one aiohttp session per process. The ``openai`` client did the same for about 40%
of the generator's CPU per call (building, sending and parsing through its typed layers;
``bench.generator_latency`` shows the difference), so the protocol is spoken here.
No retries here: failures are classified (:func:`classify`) and retried by the caller with
backoff that honours the server's retry-after.
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

import aiohttp
from pydantic import BaseModel, ValidationError

from contracts.domain import PersonaDraft, TemplateData, TokenUsage
from services.adapters.llm import messages
from services.adapters.llm.base import Answer, GeneratedText, LLMError, Message, PromptBrief
from services.runtime.settings import Settings

DEFAULT_BASE_URL = "https://api.openai.com/v1"
MAX_ANSWER_BYTES = 8 << 20  # a chat completion is kilobytes; more is not read into memory
MAX_TOKEN_COUNT = 1 << 31  # a token count the server says beyond this is not believed (and not stored)
MAX_RETRY_AFTER = 300.0  # seconds: the most of a server's retry-after that is followed
# A model name as the server answers it (``gpt-4o-2024-08-06``, ``meta-llama/Llama-3.1-8B``); any
# other string is not passed on to events and metric labels: the configured model name is.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}")


class _PersonaList(BaseModel):
    personas: list[PersonaDraft]


class HTTPStatusError(Exception):
    """A non-2xx answer: its status, headers, and the error's code and type as the server
    named them (``{"error": {"code": ..., "type": ...}}``). Its message is not kept: it can
    hold the prompt, a key or an internal URL."""

    def __init__(self, status: int, headers: Mapping[str, str], body: Any) -> None:
        # {"error": {...}} as OpenAI sends it, or the same fields at the top (some servers)
        error = body.get("error", body) if isinstance(body, dict) else None
        error = error if isinstance(error, dict) else {}
        self.status = status
        self.headers = headers
        self.code = error.get("code")
        self.type = error.get("type")
        # Whether the server said "insufficient_quota" anywhere in its error, without keeping it.
        self.quota = any("insufficient_quota" in str(error.get(k) or "") for k in ("code", "type", "message"))
        super().__init__(f"HTTP {status}")


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    """The server's ``retry-after-ms`` or ``retry-after`` in seconds: a finite number, at most
    :data:`MAX_RETRY_AFTER` (a server cannot stall every worker with ``inf`` or a day)."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            value = float(headers.get(name) or "nan") / scale
        except ValueError:
            continue
        if math.isfinite(value):
            return min(max(value, 0.0), MAX_RETRY_AFTER)
    return None


# An error's code or type as a server names it (``invalid_api_key``, ``rate_limit_exceeded``): passed
# on when it looks like one. Nothing else of an upstream error is: its message can hold the prompt, a
# key or an internal URL, and it would reach the event log, the job's results, SSE and the logs.
_NAMED = re.compile(r"[a-z][a-z0-9_]{0,63}")


def _named(value: object) -> str | None:
    return value if isinstance(value, str) and _NAMED.fullmatch(value) else None


def _status_summary(exc: HTTPStatusError) -> str:
    """``HTTP 429, rate_limit_exceeded``: the status and the error's code or type, in our words."""
    kind = _named(exc.code) or _named(exc.type)
    return f"HTTP {exc.status}" + (f", {kind}" if kind else "")


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTPS_PROXY`` or ``HTTP_PROXY`` by its
    scheme, else ``ALL_PROXY``), or None when there is none or ``NO_PROXY`` covers its host."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(parts.scheme) or proxies.get("all")


def classify(exc: Exception) -> LLMError:
    """Map a failed request to a stable error code, whether to retry, and a short summary
    of our own (never the server's message)."""
    if isinstance(exc, LLMError):
        return exc
    if isinstance(exc, TimeoutError):  # aiohttp's timeouts are TimeoutErrors too
        return LLMError("llm_timeout", "LLM timeout: the model did not answer in time", retryable=True)
    if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError | OSError):
        return LLMError("llm_unavailable", f"LLM unreachable ({exc.__class__.__name__})", retryable=True)
    if isinstance(exc, HTTPStatusError):
        status = exc.status
        after = _retry_after(exc.headers)
        summary = _status_summary(exc)
        if status == 429 and exc.quota:
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

    def __init__(self, settings: Settings) -> None:
        self.model = settings.model
        self.temperature = settings.llm_temperature
        self.base_url = (settings.openai_base_url or DEFAULT_BASE_URL).rstrip("/")
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else "not-needed"
        self._headers = {"Authorization": f"Bearer {key}"}
        if settings.openai_organization:
            self._headers["OpenAI-Organization"] = settings.openai_organization
        if settings.openai_project:
            self._headers["OpenAI-Project"] = settings.openai_project
        self._timeout = aiohttp.ClientTimeout(total=settings.llm_timeout_seconds)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _http(self) -> aiohttp.ClientSession:
        """The process's session, made in the loop that uses it. No pool limit of its own:
        the callers' concurrency caps bound the connections. The proxy variables are read
        here, once: aiohttp's ``trust_env`` reads them, and ``~/.netrc`` in a thread, for
        every request."""
        if self._closed:  # a call that outlived the service's drain opens no new session
            raise LLMError("llm_unavailable", "the LLM provider is shut down", retryable=True)
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), headers=self._headers, timeout=self._timeout,
                proxy=proxy_for(self.base_url), raise_for_status=False)
        return self._session

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """The server's JSON answer; any failure is raised as the :class:`LLMError` that
        :func:`classify` makes of it (any status but 2xx included: redirects are not followed,
        they would carry the prompt to wherever they point). A 2xx answer that is not JSON, or
        larger than :data:`MAX_ANSWER_BYTES`, is an ``invalid_output`` failure."""
        try:
            async with self._http().request(method, self.base_url + path, json=body,
                                            allow_redirects=False) as response:
                raw = bytearray()
                async for chunk in response.content.iter_chunked(1 << 16):
                    raw += chunk
                    if len(raw) > MAX_ANSWER_BYTES:
                        raise LLMError("invalid_output", f"LLM answer larger than {MAX_ANSWER_BYTES >> 20} MiB")
                answer, readable = _json(bytes(raw))
                if response.status >= 300:
                    raise HTTPStatusError(response.status, response.headers, answer)
                if not readable:
                    raise LLMError("invalid_output", "LLM answer is not JSON", retryable=True)
                return answer
        except Exception as exc:  # noqa: BLE001 - every failure is classified; not chained: it holds the server's message
            raise classify(exc) from None

    async def _complete(self, msgs: list[Message], *, json_mode: bool) -> GeneratedText:
        body: dict[str, Any] = {"model": self.model, "messages": msgs, "temperature": self.temperature}
        if json_mode:
            body["response_format"] = {"type": "json_object"}
        answer = await self._request("POST", "/chat/completions", body)
        text, model, usage = _read_completion(answer)
        if not text:
            raise LLMError("invalid_output", "LLM answered with empty content", retryable=True)
        return GeneratedText(text=text, model=model or self.model, usage=usage)

    async def _structured(self, msgs: list[Message], model: type[BaseModel]) -> Answer[Any]:
        out = await self._complete(msgs, json_mode=True)
        try:
            return Answer(model.model_validate(json.loads(out.text)), out.model, out.usage)
        except (json.JSONDecodeError, ValidationError) as exc:
            problem = _invalid(exc)
        # Raised outside the except block: the decoding error (which holds the whole answer)
        # is then not this error's context either.
        raise LLMError("invalid_output", f"LLM answer is not a valid {model.__name__}: {problem}")

    async def analyze_scenario(self, document: str) -> Answer[TemplateData]:
        return await self._structured(messages.analyze_scenario_messages(document), TemplateData)

    async def generate_personas(
        self, template: TemplateData, persona_type: str, seeds: list[str]
    ) -> Answer[list[PersonaDraft]]:
        msgs = messages.generate_personas_messages(template, persona_type, len(seeds))
        answer = await self._structured(msgs, _PersonaList)
        drafts = answer.value.personas
        if len(drafts) < len(seeds):
            raise LLMError("invalid_output", f"LLM returned {len(drafts)} personas, {len(seeds)} asked")
        return Answer(drafts[: len(seeds)], answer.model, answer.usage)

    async def write_system_prompt(self, brief: PromptBrief) -> GeneratedText:
        return await self._complete(brief.messages, json_mode=False)

    async def check(self) -> None:
        """List the models: a cheap call that proves the server answers and takes the key."""
        await self._request("GET", "/models")

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()


def _json(raw: bytes) -> tuple[Any, bool]:
    """``raw`` decoded, and whether it was JSON (an empty body is None, and JSON)."""
    if not raw:
        return None, True
    try:
        return json.loads(raw), True
    except (ValueError, RecursionError):  # not JSON, or nested beyond the decoder's depth
        return None, False


def _read_completion(answer: Any) -> tuple[str, str | None, TokenUsage]:
    """The text, model and token usage of a chat completion, read tolerantly: what is missing
    or of another shape counts as absent (an empty text is the caller's error to raise)."""
    answer = answer if isinstance(answer, dict) else {}
    choices = answer.get("choices")
    first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = first.get("message") if isinstance(first.get("message"), dict) else {}
    content = message.get("content")
    text = content.strip() if isinstance(content, str) else ""
    usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}

    def count(name: str) -> int:
        value = usage.get(name)
        return value if isinstance(value, int) and 0 <= value <= MAX_TOKEN_COUNT else 0

    model = answer.get("model")
    return text, model if isinstance(model, str) and _MODEL_NAME.fullmatch(model) else None, TokenUsage(
        prompt_tokens=count("prompt_tokens"), completion_tokens=count("completion_tokens"))
