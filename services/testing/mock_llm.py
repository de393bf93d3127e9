"""An OpenAI-compatible test LLM server whose latency and faults you set.

Real HTTP/1.1 on loopback (parsed by h11), so the provider (or any OpenAI
client) talks to it as to any server, and a fault can be anything a real one does:
429 with ``retry-after``, 5xx, 401, 400, quota exhaustion, a hang, garbage,
or a connection dropped without an answer.

Faults come from a script (``POST /admin/script``: a list consumed one per
call, first) or from rates (``POST /admin/config``). ``GET /admin/stats`` counts
calls, outcomes, and concurrency, with each call's start time. ``POST /admin/pause`` holds
every answer until ``POST /admin/resume`` (a benchmark connects its clients first).

    promptgen mock-llm --port 8100 --latency-ms 500 --error-rate 0.1
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
import uuid
from collections import Counter, deque
from typing import Any, Literal

import h11
from pydantic import BaseModel, Field

from services.adapters.llm.base import approx_tokens

Fault = Literal["ok", "rate_limit", "quota", "error", "timeout_408", "bad_request", "auth", "hang", "garbage", "drop"]


class MockLLMConfig(BaseModel):
    model: str = "mock-llm"
    latency_ms: float = Field(0, ge=0)
    latency_jitter_ms: float = Field(0, ge=0)
    error_rate: float = Field(0, ge=0, le=1)
    rate_limit_rate: float = Field(0, ge=0, le=1)
    rate_limit_retry_after_s: float = Field(1.0, ge=0)
    quota_rate: float = Field(0, ge=0, le=1)
    hang_rate: float = Field(0, ge=0, le=1)
    garbage_rate: float = Field(0, ge=0, le=1)
    drop_rate: float = Field(0, ge=0, le=1)
    auth_fail: bool = False
    seed: int | None = None


class ScriptStep(BaseModel):
    fault: Fault = "ok"
    latency_ms: float | None = None
    retry_after_s: float | None = None
    status: int | None = None
    message: str | None = None  # an error's message instead of the usual one (a real server's can echo anything)


def _error(status: int, message: str, kind: str, code: str | None = None) -> tuple[int, dict, dict[str, str]]:
    return status, {"error": {"message": message, "type": kind, "param": None, "code": code}}, {}


class MockLLM:
    """The server's state and behaviour; :meth:`serve` binds it to a loopback port."""

    def __init__(self, config: MockLLMConfig | None = None) -> None:
        self.config = config or MockLLMConfig()
        self.random = random.Random(self.config.seed)
        self.script: deque[ScriptStep] = deque()
        self.reset()
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self._hanging: set[asyncio.Task] = set()
        self._open = asyncio.Event()  # cleared while paused
        self._open.set()

    # --- control -------------------------------------------------------------------------

    def reset(self) -> None:
        self.script.clear()
        self.outcomes: Counter[str] = Counter()
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.started: list[float] = []

    def configure(self, config: MockLLMConfig) -> None:
        self.config = config
        self.random = random.Random(config.seed)

    def pause(self) -> None:
        """Hold every answer (calls still arrive and count as in flight) until :meth:`resume`."""
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    def add_script(self, steps: list[ScriptStep | dict]) -> None:
        self.script.extend(ScriptStep.model_validate(s) for s in steps)

    def stats(self) -> dict[str, Any]:
        return {"requests": self.requests, "outcomes": dict(self.outcomes), "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight, "started": list(self.started)}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # --- serving -------------------------------------------------------------------------

    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> MockLLM:
        self.server = await asyncio.start_server(self._connection, host, port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self.server:
            self.server.close()
            for task in list(self._hanging):
                task.cancel()
            await self.server.wait_closed()

    async def __aenter__(self) -> MockLLM:
        return await self.serve()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = await self._read_request(conn, reader)
                if request is None:
                    return
                answer = await self._route(request.method.decode(), request.target.decode(), body)
                if answer is None:  # a dropped connection: no answer at all
                    return
                status, payload, headers = answer
                raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                head = [("content-type", "application/json"), ("content-length", str(len(raw))),
                        *headers.items()]
                writer.write(conn.send(h11.Response(status_code=status, headers=head)))
                writer.write(conn.send(h11.Data(data=raw)))
                writer.write(conn.send(h11.EndOfMessage()))
                await writer.drain()
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, h11.RemoteProtocolError, asyncio.CancelledError):
            return
        finally:
            writer.close()

    async def _read_request(self, conn: h11.Connection, reader: asyncio.StreamReader):
        request, body = None, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                if not data and conn.their_state is not h11.DONE:
                    return None, b""
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return request, body
            elif isinstance(event, h11.ConnectionClosed):
                return None, b""

    async def _route(self, method: str, target: str, body: bytes):
        path = target.split("?")[0]
        if method == "POST" and path == "/v1/chat/completions":
            return await self._chat(json.loads(body or b"{}"))
        if method == "GET" and path == "/v1/models":
            if self.config.auth_fail:
                return _error(401, "Incorrect API key provided", "invalid_request_error", "invalid_api_key")
            return 200, {"object": "list", "data": [{"id": self.config.model, "object": "model",
                                                    "owned_by": "promptgen"}]}, {}
        if method == "GET" and path == "/healthz":
            return 200, {"status": "ok"}, {}
        if method == "GET" and path == "/admin/stats":
            return 200, self.stats(), {}
        if method == "POST" and path == "/admin/script":
            self.add_script(json.loads(body))
            return 200, {"queued": len(self.script)}, {}
        if method == "POST" and path == "/admin/config":
            changes = json.loads(body)  # what it names changes; the rest stays as it was (given at start)
            if not isinstance(changes, dict):
                raise ValueError("POST /admin/config takes an object of the settings to change")
            self.configure(MockLLMConfig.model_validate({**self.config.model_dump(), **changes}))
            return 200, self.config.model_dump(), {}
        if method == "POST" and path in ("/admin/pause", "/admin/resume"):
            self.pause() if path == "/admin/pause" else self.resume()
            return 200, {"paused": not self._open.is_set()}, {}
        if method == "POST" and path == "/admin/reset":
            self.reset()
            return 200, {"reset": True}, {}
        return _error(404, f"no route {method} {path}", "invalid_request_error")

    # --- the model -------------------------------------------------------------------------

    def _next_fault(self) -> ScriptStep:
        if self.script:
            return self.script.popleft()
        c = self.config
        if c.auth_fail:
            return ScriptStep(fault="auth")
        draw = self.random.random()
        for fault, rate in (("drop", c.drop_rate), ("hang", c.hang_rate), ("rate_limit", c.rate_limit_rate),
                            ("quota", c.quota_rate), ("error", c.error_rate), ("garbage", c.garbage_rate)):
            if draw < rate:
                return ScriptStep(fault=fault)
            draw -= rate
        return ScriptStep()

    async def _chat(self, request: dict[str, Any]):
        step = self._next_fault()
        self.requests += 1
        self.started.append(time.time())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.outcomes[step.fault] += 1
        try:
            latency = step.latency_ms if step.latency_ms is not None else self.config.latency_ms
            latency += self.random.uniform(0, self.config.latency_jitter_ms)
            if step.fault == "hang":
                task = asyncio.current_task()
                self._hanging.add(task)
                try:
                    await asyncio.sleep(3600)
                finally:
                    self._hanging.discard(task)
            await self._open.wait()
            await asyncio.sleep(latency / 1000)
            return self._answer(step, request)
        finally:
            self.in_flight -= 1

    def _answer(self, step: ScriptStep, request: dict[str, Any]):
        def said(usual: str) -> str:
            return step.message or usual

        if step.fault == "drop":
            return None
        if step.fault == "rate_limit":
            after = step.retry_after_s if step.retry_after_s is not None else self.config.rate_limit_retry_after_s
            status, body, _ = _error(429, said("Rate limit reached for requests"), "requests", "rate_limit_exceeded")
            return status, body, {"retry-after": f"{after:g}", "retry-after-ms": str(int(after * 1000))}
        if step.fault == "quota":
            return _error(429, said("You exceeded your current quota"), "insufficient_quota", "insufficient_quota")
        if step.fault == "error":
            return _error(step.status or 500, said("The server had an error processing your request"), "server_error")
        if step.fault == "timeout_408":
            return _error(408, said("Request timed out"), "timeout")
        if step.fault == "bad_request":
            return _error(400, said("The response was filtered due to the prompt triggering the content policy"),
                          "invalid_request_error", "content_filter")
        if step.fault == "auth":
            return _error(401, said("Incorrect API key provided"), "invalid_request_error", "invalid_api_key")
        messages = request.get("messages") or []
        json_mode = (request.get("response_format") or {}).get("type") == "json_object"
        content = "this is {not json" if step.fault == "garbage" else _content(messages, json_mode)
        prompt_tokens = sum(approx_tokens(len(str(m.get("content", "")))) for m in messages)
        completion_tokens = approx_tokens(len(content))
        return 200, {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model") or self.config.model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }, {}


def _content(messages: list[dict[str, Any]], json_mode: bool) -> str:
    text = "\n".join(str(m.get("content", "")) for m in messages)
    hint = re.search(r"JSON_SCHEMA_HINT:\s*(\w+)", text)
    if json_mode and hint and hint.group(1) == "template":
        last = str(messages[-1].get("content", "")) if messages else ""
        title = next((ln.strip("# ").strip() for ln in last.splitlines() if ln.strip()), "Scenario")
        return json.dumps({
            "title": title[:100], "description": f"A practice conversation: {title}.",
            "context": last[:300], "learning_objectives": ["Listen actively", "Handle objections"],
            "roles": [{"name": "Learner", "description": "the trainee"},
                      {"name": "Counterpart", "description": "the person they talk to"}],
            "success_criteria": ["Both sides agree on next steps"],
        })
    if json_mode and hint and hint.group(1) == "personas":
        count = int(m.group(1)) if (m := re.search(r"COUNT:\s*(\d+)", text)) else 1
        names = ["Dana Whitfield", "Ravi Menon", "Lena Fischer", "Tomas Ortega", "Aiko Sato", "Grace Obi"]
        return json.dumps({"personas": [
            {"name": names[i % len(names)] + (f" {i // len(names) + 1}" if i >= len(names) else ""),
             "age": 30 + i % 30, "role": "Counterpart", "archetype": "SKEPTIC",
             "detail_categories": {"background": "from the mock LLM"},
             "conversation_rules": {"never": ["break character"]}}
            for i in range(count)]})
    if json_mode:
        return json.dumps({"text": text[:200]})
    user = str(messages[-1].get("content", "")) if messages else ""
    return ("You are the avatar of this training scenario. Stay in character, answer as the persona "
            "would, and keep the conversation realistic.\n\nWhat you know:\n" + user[:1500])


def run(config: MockLLMConfig, host: str = "127.0.0.1", port: int = 8100) -> None:
    async def main() -> None:
        server = await MockLLM(config).serve(host, port)
        print(f"mock LLM listening on {server.base_url} (OPENAI_BASE_URL)", flush=True)
        await server.server.serve_forever()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
