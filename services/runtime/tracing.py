"""Traces with OpenTelemetry: one trace per job, from the HTTP request that starts it,
through the event log (the W3C trace context stored in each event's NATS headers), to the
generator's LLM calls, the projector's writes and the gateway's SSE messages.

Off by default: no provider, no exporter, and the helpers below do nothing (they check
:func:`active` first, so a process without tracing pays a function call). On when the
standard variables say so (:func:`wanted`); spans then go over OTLP (HTTP/protobuf) to the
collector the ``OTEL_EXPORTER_OTLP_*`` variables name. Each composition root calls
:func:`start_tracing` and shuts the handle down (flushing) when the process stops.

Our code asks the global API for its tracers at each use (``trace.get_tracer``), so a test
that installs a provider of its own (:func:`use_exporter`, an ``InMemorySpanExporter``)
sees every span, whichever service made it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.util.re import parse_env_headers

from contracts.events import Envelope

TRACER = "promptgen"
EXPORTERS = ("otlp", "none")
PROTOCOL = "http/protobuf"


class TracingConfigError(ValueError):
    """An ``OTEL_*`` variable asks for something this service cannot do."""


def _get(env: Mapping[str, str], name: str) -> str:
    return (env.get(name) or "").strip()  # an empty variable is unset


def wanted(env: Mapping[str, str] | None = None) -> bool:
    """Whether the standard variables turn tracing on: ``OTEL_TRACES_EXPORTER=otlp``, or an
    OTLP endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``)
    with no ``OTEL_TRACES_EXPORTER=none``; never with ``OTEL_SDK_DISABLED=true``. Raises
    :class:`TracingConfigError` naming the variable that asks for another exporter or protocol."""
    env = os.environ if env is None else env
    if _get(env, "OTEL_SDK_DISABLED").lower() == "true":
        return False
    exporters = [e.strip() for e in _get(env, "OTEL_TRACES_EXPORTER").lower().split(",") if e.strip()]
    if unknown := [e for e in exporters if e not in EXPORTERS]:
        raise TracingConfigError(f"OTEL_TRACES_EXPORTER={','.join(exporters)}: {', '.join(unknown)} is not "
                                 f"supported; this service exports spans over OTLP: set otlp or none")
    if "none" in exporters:
        return False
    on = "otlp" in exporters or bool(_get(env, "OTEL_EXPORTER_OTLP_ENDPOINT")
                                     or _get(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = _get(env, name)
        if on and protocol and protocol != PROTOCOL:
            raise TracingConfigError(f"{name}={protocol} is not supported: spans go over OTLP {PROTOCOL} "
                                     f"(unset it, or set {PROTOCOL})")
        if protocol:
            break  # the traces-specific variable wins over the general one
    return on


HEADER_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS")


def exporter_headers(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The collector's request headers given as a file (a secret, such as an API key:
    ``OTEL_EXPORTER_OTLP_HEADERS_FILE``, or ``OTEL_EXPORTER_OTLP_TRACES_HEADERS_FILE``, which
    wins), in the variables' ``key=value,...`` form. Headers given in the variables themselves
    are read by the exporter. Raises :class:`TracingConfigError` naming a variable set twice or
    a file that cannot be read. Never logged."""
    env = os.environ if env is None else env
    for name in HEADER_VARIABLES:
        path = _get(env, f"{name}_FILE")
        if not path:
            continue
        if _get(env, name):
            raise TracingConfigError(f"both {name} and {name}_FILE are set: set one")
        try:
            text = Path(path).read_text().strip()
        except OSError as exc:
            raise TracingConfigError(f"{name}_FILE={path} cannot be read: {exc.strerror}") from None
        return dict(parse_env_headers(text, liberal=True))
    return {}


def check(env: Mapping[str, str] | None = None) -> bool:
    """Whether tracing is on (:func:`wanted`), having read all it needs from files: a process
    refuses to start on an ``OTEL_*`` variable it cannot honour."""
    on = wanted(env)
    if on:
        exporter_headers(env)
    return on


def service_resource(service: str) -> Resource:
    """The process's resource: ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_SERVICE_NAME`` as the SDK
    reads them, the service name defaulting to ``promptgen-<service>``."""
    detected = OTELResourceDetector().detect().attributes
    return Resource.create({SERVICE_NAME: detected.get(SERVICE_NAME) or f"promptgen-{service}"})


@dataclass
class Tracing:
    """This process's tracing: the provider its spans go through (None when off), and whether
    this handle made it (and so shuts it down)."""

    provider: TracerProvider | None = None
    owned: bool = False

    @property
    def active(self) -> bool:
        return self.provider is not None

    def shutdown(self) -> None:
        """Export what is still buffered and stop (waits at most the exporter's timeout)."""
        if self.owned and self.provider is not None:
            self.provider.shutdown()
            self.owned = False


def start_tracing(service: str, env: Mapping[str, str] | None = None) -> Tracing:
    """Tracing for a process of ``service`` (gateway, generator, projector) as the environment
    says. A provider already installed (a test's, or another service's in the same process)
    is used as it is; otherwise one is made and installed only when :func:`wanted`."""
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return Tracing(current, owned=False)
    if not wanted(env):
        return Tracing()
    # Imported only when on: the exporter brings requests and protobuf with it.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(headers=exporter_headers(env) or None)  # the rest: OTEL_EXPORTER_OTLP_*
    provider = TracerProvider(resource=service_resource(service))  # the sampler: OTEL_TRACES_SAMPLER
    provider.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_*
    trace.set_tracer_provider(provider)
    return Tracing(provider, owned=True)


def use_exporter(exporter: SpanExporter, service: str = "test") -> TracerProvider:
    """The test hook: every span of this process goes to ``exporter`` as it ends (an
    ``InMemorySpanExporter``). Installs the global provider, which the API lets a process do
    once: a test resets the API's globals around it (``opentelemetry.test``)."""
    provider = TracerProvider(resource=service_resource(service))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def active() -> bool:
    """Whether spans are recorded in this process (a provider is installed)."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER)


# --- events: what a span says about one, and its trace context in the NATS headers -------


def type_of(event: Envelope) -> str:
    return str(getattr(event, "type", "event"))  # every concrete event has its type string


def event_attributes(event: Envelope | None, **more: Any) -> dict[str, Any]:
    """The span attributes naming an event: its type, job and persona (never its content)."""
    attributes: dict[str, Any] = {"messaging.system": "nats"}
    if event is not None:
        attributes["promptgen.event_type"] = type_of(event)
        for name in ("job_id", "persona_id"):
            if value := getattr(event, name, None):
                attributes[f"promptgen.{name}"] = value
    attributes.update({k: v for k, v in more.items() if v is not None})
    return attributes


@contextmanager
def publishing(event: Envelope, subject: str) -> Iterator[dict[str, str]]:
    """The headers to store ``event`` with: its ``Nats-Msg-Id`` and, while tracing, the W3C
    ``traceparent`` (and ``tracestate``) of a producer span that lasts the publish."""
    headers = {"Nats-Msg-Id": event.dedup_id()}
    if not active():
        yield headers
        return
    attributes = event_attributes(event, **{"messaging.destination.name": subject,
                                            "messaging.operation.type": "send",
                                            "messaging.message.id": headers["Nats-Msg-Id"]})
    with tracer().start_as_current_span(f"publish {type_of(event)}", kind=SpanKind.PRODUCER, attributes=attributes):
        propagate.inject(headers)
        yield headers


@contextmanager
def consuming(name: str, headers: Mapping[str, str] | None, event: Envelope | None = None,
              **attributes: Any) -> Iterator[Span]:
    """A span for handling one event, current while the block runs: a child of the context
    its publisher stored in ``headers`` (a root when there is none)."""
    if not active():
        yield trace.INVALID_SPAN
        return
    with tracer().start_as_current_span(
        name, context=propagate.extract(headers or {}), kind=SpanKind.CONSUMER,
        attributes=event_attributes(event, **{"messaging.operation.type": "process"}, **attributes),
    ) as span:
        yield span


@contextmanager
def span(name: str, *, kind: SpanKind = SpanKind.INTERNAL, **attributes: Any) -> Iterator[Span]:
    """A span of our own under the current one, current while the block runs."""
    if not active():
        yield trace.INVALID_SPAN
        return
    with tracer().start_as_current_span(name, kind=kind,
                                        attributes={k: v for k, v in attributes.items() if v is not None}) as s:
        yield s


class Traced(Protocol):
    """A stored event as the log returns it (:class:`~services.adapters.event_log.StoredEvent`)."""

    @property
    def seq(self) -> int: ...
    @property
    def event(self) -> Envelope | None: ...
    @property
    def headers(self) -> Mapping[str, str]: ...


def has_context(headers: Mapping[str, str] | None) -> bool:
    return bool(headers) and "traceparent" in headers  # type: ignore[operator]


def event_spans(verb: str, events: Iterable[Traced], *, links: Iterable[Span] = (),
                **attributes: Any) -> dict[int, Span]:
    """One span per event that carries a trace context, each a child of that context, keyed
    by sequence: for work done on many events at once (a batch written together, a chunk of
    SSE messages), so each event's trace shows it. Not current: the caller ends them
    (:func:`end_spans`), whatever the outcome."""
    if not active():
        return {}
    link_list = [Link(s.get_span_context()) for s in links if s.get_span_context().is_valid]
    out: dict[int, Span] = {}
    for stored in events:
        if stored.event is None or not has_context(stored.headers):
            continue
        out[stored.seq] = tracer().start_span(
            f"{verb} {type_of(stored.event)}", context=propagate.extract(stored.headers), kind=SpanKind.CONSUMER,
            links=link_list,
            attributes=event_attributes(stored.event, **{"promptgen.seq": stored.seq}, **attributes),
        )
    return out


def fail(span_: Span | None, error: BaseException | str) -> None:
    """Mark ``span_`` (if any, and recording) as failed with ``error``."""
    if span_ is None or not span_.is_recording():
        return
    if isinstance(error, BaseException):
        span_.record_exception(error)
    span_.set_status(Status(StatusCode.ERROR, str(error)[:200]))


def end_spans(spans: Mapping[int, Span] | Iterable[Span]) -> None:
    for s in (spans.values() if isinstance(spans, Mapping) else spans):
        s.end()


def note(**attributes: Any) -> None:
    """Set ``attributes`` on the current span, when one is recording."""
    current = trace.get_current_span()
    if current.is_recording():
        current.set_attributes({k: v for k, v in attributes.items() if v is not None})


def current_span() -> Span:
    return trace.get_current_span()


def log_ids() -> dict[str, str]:
    """``trace_id`` and ``span_id`` of the current span while one is recording (else nothing),
    as a log line carries them: the hex forms trace back-ends search by."""
    current = trace.get_current_span()
    if not current.is_recording():
        return {}
    ctx = current.get_span_context()
    return {"trace_id": trace.format_trace_id(ctx.trace_id), "span_id": trace.format_span_id(ctx.span_id)}
