"""Tracing's switch and its marks: off unless the standard variables say so (then no provider,
no exporter, no header beyond the deduplication id), on with a provider named after the
service, trace ids in log lines inside a span, one span per LLM call with its outcome."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog
from opentelemetry import trace
from opentelemetry.test.globals_test import reset_trace_globals
from opentelemetry.trace import StatusCode

from services.adapters.llm.base import LLMError
from services.gateway.app import create_app
from services.generator.work import generate_persona_prompt
from services.runtime import tracing
from services.runtime.logs import configure_logging
from services.runtime.settings import Settings
from services.runtime.tracing import TracingConfigError, start_tracing, wanted
from services.testing import MemoryEventLog
from tests.samples import every_event, job_requested
from tests.unit.test_generation import ScriptedProvider

OTEL_VARIABLES = ("OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
                  "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
                  "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES")


@pytest.fixture
def untraced(monkeypatch):
    """A process with no OTEL_* variable and no tracer provider, as one starts."""
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    reset_trace_globals()
    yield
    reset_trace_globals()


@pytest.mark.parametrize(("env", "on"), [
    ({}, False),
    ({"OTEL_TRACES_EXPORTER": ""}, False),  # empty is unset
    ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "TRUE"}, False),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "false"}, True),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, True),
    # the traces-specific protocol wins over the general one
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
      "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, True),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, False),  # off: the protocol does not matter
])
def test_the_standard_variables_turn_tracing_on(env, on):
    assert wanted(env) is on


@pytest.mark.parametrize(("env", "variable"), [
    ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER"),
    ({"OTEL_TRACES_EXPORTER": "otlp,console"}, "OTEL_TRACES_EXPORTER"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"},
     "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
])
def test_what_we_cannot_export_is_refused_naming_the_variable(env, variable):
    with pytest.raises(TracingConfigError, match=variable):
        wanted(env)


async def test_off_means_no_provider_no_exporter_and_no_header_beyond_the_msg_id(untraced):
    handle = start_tracing("generator")
    assert handle.provider is None and not handle.active and not tracing.active()
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)  # nothing installed
    app = create_app(Settings(provider="offline"))
    assert not getattr(app, "_is_instrumented_by_opentelemetry", False)  # no HTTP spans either
    log = MemoryEventLog()
    request = job_requested("j1", ("p1",))
    with tracing.consuming("dispatch job.requested", {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},
                           request) as span:
        assert span is trace.INVALID_SPAN
        seq = await log.publish(request)
    assert dict((await log.at(seq)).headers) == {"Nats-Msg-Id": request.dedup_id()}
    assert tracing.event_spans("project", [await log.at(seq)]) == {}
    handle.shutdown()  # nothing to flush, nothing raised


def test_on_installs_a_provider_named_after_the_service_and_shuts_it_down_once(untraced, monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # never reached: no span ends
    handle = start_tracing("generator")
    try:
        assert handle.active and handle.owned and tracing.active()
        assert trace.get_tracer_provider() is handle.provider
        assert handle.provider.resource.attributes["service.name"] == "promptgen-generator"
        # a second service in the same process (tests run them so) shares it and leaves it open
        other = start_tracing("projector")
        assert other.provider is handle.provider and not other.owned
        other.shutdown()
        with tracing.span("still open") as s:
            assert s.is_recording()
    finally:
        handle.shutdown()
        handle.shutdown()  # a second call does nothing


@pytest.mark.parametrize(("env", "name"), [
    ({"OTEL_SERVICE_NAME": "promptgen-gateway-eu"}, "promptgen-gateway-eu"),
    ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=edge,deployment.environment=prod"}, "edge"),
    ({"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod"}, "promptgen-gateway"),
])
def test_the_service_name_defaults_to_ours_unless_the_variables_name_one(untraced, monkeypatch, env, name):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert tracing.service_resource("gateway").attributes["service.name"] == name


def test_a_log_line_inside_a_span_carries_its_trace_and_span_ids(spans):
    out = io.StringIO()
    try:
        configure_logging("generator", "info", stream=out, cache=False)
        with trace.get_tracer("test").start_as_current_span("work") as span:
            structlog.get_logger().info("persona_generated")
            logging.getLogger("uvicorn.error").warning("a library's line")
        structlog.get_logger().info("outside")
        inside, library, outside = [json.loads(line) for line in out.getvalue().splitlines()]
    finally:
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()
        logging.getLogger().handlers[:] = []
    context = span.get_span_context()
    for line in (inside, library):
        assert line["trace_id"] == f"{context.trace_id:032x}" and line["span_id"] == f"{context.span_id:016x}"
    assert "trace_id" not in outside and "span_id" not in outside


async def test_each_llm_call_is_a_span_with_its_model_and_outcome_and_no_prompt_text(spans):
    item = next(e for e in every_event() if e.type == "persona.prompt_requested")
    provider = ScriptedProvider([LLMError("llm_unavailable", "503", retryable=True), "the secret prompt text"])

    async def no_sleep(_: float) -> None:
        return None

    out = await generate_persona_prompt(item, provider=provider, max_attempts=3, sleep=no_sleep)
    assert out.type == "persona.completed"
    failed, ok = sorted((s for s in spans.get_finished_spans() if s.name == "llm call"),
                        key=lambda s: s.attributes["promptgen.attempt"])
    assert failed.attributes["promptgen.outcome"] == "error" and failed.attributes["error.type"] == "llm_unavailable"
    assert failed.status.status_code == StatusCode.ERROR
    assert ok.attributes["promptgen.outcome"] == "ok" and ok.attributes["gen_ai.request.model"] == "m"
    assert ok.attributes["gen_ai.usage.input_tokens"] == 3 and ok.attributes["gen_ai.usage.output_tokens"] == 2
    for s in (failed, ok):
        assert s.kind == trace.SpanKind.CLIENT
        assert s.attributes["promptgen.job_id"] == item.job_id
        assert s.attributes["promptgen.persona_id"] == item.persona_id
        assert not any("secret prompt" in str(v) for v in s.attributes.values())


def test_the_collectors_headers_can_come_from_a_file(tmp_path):
    general, traces = tmp_path / "headers", tmp_path / "traces-headers"
    general.write_text("api-key=s3cret,x-team=prompt%20gen\n")
    traces.write_text("api-key=traces-only")
    assert tracing.exporter_headers({}) == {}
    assert tracing.exporter_headers({"OTEL_EXPORTER_OTLP_HEADERS_FILE": str(general)}) == {
        "api-key": "s3cret", "x-team": "prompt gen"}
    assert tracing.exporter_headers({"OTEL_EXPORTER_OTLP_HEADERS_FILE": str(general),
                                     "OTEL_EXPORTER_OTLP_TRACES_HEADERS_FILE": str(traces)}) == {
        "api-key": "traces-only"}


@pytest.mark.parametrize(("env", "message"), [
    ({"OTEL_EXPORTER_OTLP_HEADERS_FILE": "/nonexistent/headers"}, "OTEL_EXPORTER_OTLP_HEADERS_FILE"),
    ({"OTEL_EXPORTER_OTLP_HEADERS_FILE": "/etc/hostname", "OTEL_EXPORTER_OTLP_HEADERS": "a=b"},
     "both OTEL_EXPORTER_OTLP_HEADERS and OTEL_EXPORTER_OTLP_HEADERS_FILE"),
])
def test_a_headers_file_that_cannot_be_used_is_refused_at_start_when_tracing(env, message):
    assert tracing.check(env) is False  # off: nothing is read
    with pytest.raises(TracingConfigError, match=message):
        tracing.check({**env, "OTEL_TRACES_EXPORTER": "otlp"})
