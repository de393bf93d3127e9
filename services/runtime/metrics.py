"""Every Prometheus series promptgen exposes, in one place.

A :class:`Metrics` owns its own registry (never the global one): each process's
composition root creates one and hands it to whatever counts, so in-process tests
run several services side by side without their series mixing. Labels are bounded
by design: statuses, error codes, models, consumers, route templates; never a job or
persona id (one series per job would grow without end).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

# An LLM call takes from a few hundred milliseconds to its timeout (120 s by default).
LLM_SECONDS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
HTTP_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
WAIT_SECONDS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60)
# A rebuild reads the whole log: seconds for a small one, an hour for a very large one.
REBUILD_SECONDS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

CONTENT_TYPE = CONTENT_TYPE_LATEST


# The series each service exposes, by group: a process serves only its own on /metrics (a
# gateway exporting the projector's lag as 0 would mislead a dashboard that does not use max()).
SERVICE_GROUPS: dict[str, frozenset[str]] = {
    "gateway": frozenset({"gateway", "llm"}),  # template analysis and persona drafts call the LLM
    "generator": frozenset({"generator", "llm", "consumer"}),
    "projector": frozenset({"projector", "consumer"}),
}
Service = Literal["gateway", "generator", "projector"]


@dataclass
class Metrics:
    """``service``: expose only that service's series (the others are still counted, nowhere
    shown); None, every series (a test running several services in one process)."""

    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))
    service: Service | None = None

    def __post_init__(self) -> None:
        groups = SERVICE_GROUPS[self.service] if self.service is not None else None

        def exposed(group: str) -> CollectorRegistry | None:
            return self.registry if groups is None or group in groups else None

        r = exposed("llm")
        self.llm_call_duration = Histogram(
            "promptgen_llm_call_duration_seconds", "One LLM call, by model and outcome (ok or error).",
            ["model", "outcome"], buckets=LLM_SECONDS, registry=r)
        self.llm_tokens = Counter(
            "promptgen_llm_tokens", "Tokens the LLM reported, by model and direction (prompt: in, completion: out).",
            ["model", "direction"], registry=r)
        self.rate_limit_wait = Histogram(
            "promptgen_llm_rate_limit_wait_seconds", "Time a call waited for its turn under the shared LLM limits.",
            buckets=WAIT_SECONDS, registry=r)
        r = exposed("generator")
        self.llm_retries = Counter(  # the gateway's calls are not tried again: its client does
            "promptgen_llm_retries", "LLM calls tried again after a transient failure, by error code.",
            ["error_code"], registry=r)
        self.personas_finished = Counter(
            "promptgen_personas_finished", "Personas that reached an outcome, by outcome and error code "
            "(error_code is empty for a completed persona).", ["outcome", "error_code"], registry=r)
        self.work_items_redelivered = Counter(
            "promptgen_work_items_redelivered", "Work items delivered again (a worker failed, crashed or hung).",
            registry=r)
        self.dead_letters = Counter(
            "promptgen_dead_letters", "Work items that ran out of deliveries and became a failed persona.",
            registry=r)
        r = exposed("projector")
        self.jobs_finished = Counter(
            "promptgen_jobs_finished", "Jobs ended by the job manager, by final status.", ["status"], registry=r)
        self.projector_lag_events = Gauge(
            "promptgen_projector_lag_events", "Events in the log the fold has not applied yet.", registry=r)
        self.projector_lag_seconds = Gauge(
            "promptgen_projector_lag_seconds", "Age of the newest applied event while the fold is behind; "
            "0 when caught up.", registry=r)
        self.projector_writes = Counter(
            "promptgen_projector_writes", "MongoDB writes of the live fold: a document inserted, an upsert, an update "
            "of one document, or of many (which no projection makes now).", ["operation"], registry=r)
        self.projector_batches = Counter(
            "promptgen_projector_batches", "Batches of the live fold stored, by how: in one transaction with "
            "the checkpoint, or write by write with the checkpoint last.", ["written"], registry=r)
        self.rebuilds = Counter(
            "promptgen_rebuilds", "Rebuilds of the read models from the log, by outcome: completed (the "
            "rebuilt documents are live), failed (the live ones are as they were) or cancelled (the projector "
            "stopped during it).", ["outcome"], registry=r)
        for outcome in ("completed", "failed", "cancelled"):  # from 0: a first failure is an increase
            self.rebuilds.labels(outcome)
        self.rebuild_duration = Histogram(
            "promptgen_rebuild_duration_seconds", "Time from a rebuild's start to its end, whatever the outcome.",
            buckets=REBUILD_SECONDS, registry=r)
        self.rebuild_running = Gauge(
            "promptgen_rebuild_running", "1 while a rebuild runs on this projector (the live fold waits for it "
            "to switch), else 0.", registry=r)
        self.rebuild_progress = Gauge(
            "promptgen_rebuild_progress_ratio", "The running (or last) rebuild's progress through each stage, "
            "0 to 1: writing (the log folded and stored), switching (the live collections brought to the "
            "rebuilt ones).", ["stage"], registry=r)
        r = exposed("consumer")  # every service that consumes events and may park one
        self.parked_events = Counter(
            "promptgen_parked_events", "Events a consumer could not decode or store, set aside for an operator.",
            ["consumer"], registry=r)
        r = exposed("gateway")
        self.sse_clients = Gauge(
            "promptgen_sse_clients", "SSE streams open on this gateway.", registry=r)
        self.sse_messages = Counter(
            "promptgen_sse_messages_sent", "SSE messages sent to clients (one write may carry several).",
            registry=r)
        self.read_fence_reads = Counter(
            "promptgen_read_fence_reads", "Reads that first waited for the projector to apply what the log held of "
            "them (read-your-writes), by outcome: fresh; feed_lagging or projection_lagging when this gateway's "
            "feed or the projector did not get that far within PROMPTGEN_PROJECTION_WAIT_SECONDS (the read "
            "answers from what is stored).", ["outcome"], registry=r)
        self.read_fence_log_errors = Counter(
            "promptgen_read_fence_log_errors", "Fenced reads that could not ask the log where it ends (they waited "
            "for what the feed had seen).", registry=r)
        self.read_fence_wait = Histogram(
            "promptgen_read_fence_wait_seconds", "Time a fenced read waited before reading.", buckets=WAIT_SECONDS,
            registry=r)
        self.read_fence_remembered = Gauge(
            "promptgen_read_fence_remembered", "Job ends and persona prompts this gateway's feed has seen and "
            "keeps until it finds the projector past them.", registry=r)
        self.http_requests = Counter(
            "promptgen_http_requests", "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"], registry=r)
        self.http_duration = Histogram(
            "promptgen_http_request_duration_seconds", "Time to answer an HTTP request (an SSE stream: its life).",
            ["method", "route"], buckets=HTTP_SECONDS, registry=r)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)

    def count_writes(self, inserted: int, updates: list) -> None:
        """Count a batch's writes to one collection (``updates``: its Changes, after the inserts)."""
        many = sum(1 for change in updates if change.many)
        upserts = sum(1 for change in updates if change.upsert)
        self.projector_writes.labels(operation="insert").inc(inserted)
        self.projector_writes.labels(operation="upsert").inc(upserts)
        self.projector_writes.labels(operation="update").inc(len(updates) - many - upserts)
        self.projector_writes.labels(operation="update_many").inc(many)

    def persona_finished(self, outcome: str, error_code: str | None = None) -> None:
        self.personas_finished.labels(outcome=outcome, error_code=error_code or "").inc()
