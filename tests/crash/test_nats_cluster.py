"""A job survives losing the NATS node that leads its stream: three local nats-servers form a
cluster (no containers), the event log is replicated three times, and the services know
every node through the seed list. The leader is killed with SIGKILL mid-job; JetStream
elects another, the services reconnect to the nodes left, and the job completes with
exactly one PersonaCompleted per persona."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest
from structlog.testing import capture_logs

from contracts import subjects
from contracts.events import PersonaProgress
from services.adapters.api_keys import ApiKeys
from services.adapters.event_log import EventLog
from services.cli import embedded
from services.runtime.settings import Settings
from tests.crash.harness import Deployment
from tests.flows import create_personas, create_template, cycle_modes, start_job
from tests.servers import NatsCluster
from tests.sse_client import SseMessage, read_sse
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(180)

PERSONAS = 50
KILL_AFTER_COMPLETED = 10


@pytest.fixture
def cluster(tmp_path):
    """Three nodes, stopped however the test ends (a failure before its own cleanup included)."""
    nodes = NatsCluster(tmp_path / "nats").start()
    try:
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
def deployment(tmp_path, slow_llm_url, cluster):
    d = Deployment(tmp_path, nats=cluster, OPENAI_BASE_URL=slow_llm_url, OPENAI_API_KEY="test-key",
                   PROMPTGEN_STREAM_REPLICAS="3", PROMPTGEN_WORKER_CONCURRENCY="5", PROMPTGEN_LLM_MAX_ATTEMPTS="6")
    yield d, cluster
    d.close()


def _completed(messages: list[SseMessage]) -> int:
    return sum(1 for m in messages if m.data["type"] == "persona_progress" and m.data["status"] == "completed")


async def _leader(event_log: EventLog) -> str | None:
    info = await event_log.js.stream_info(event_log.stream)
    return info.cluster.leader if info.cluster else None


async def _to_the_end(client: httpx.AsyncClient, path: str, seen: list[SseMessage]) -> list[SseMessage]:
    """Follow the job to its results as a browser does: a stream cut while the cluster elects
    a leader is resumed with Last-Event-ID."""
    part: list[SseMessage] = []

    def keep(messages: list[SseMessage]) -> bool:
        part[:] = messages
        return False

    for _ in range(20):
        part.clear()
        try:
            await read_sse(client, path, headers={"Last-Event-ID": seen[-1].id}, until=keep)
        except httpx.HTTPError:
            pass  # the stream was cut: reconnect after the last message, as EventSource does
        seen += part
        if seen[-1].data["type"] == "results":
            return seen
    raise AssertionError(f"no results after 20 reconnections: {seen[-1].data}")


async def test_a_job_completes_when_the_nats_node_leading_its_stream_is_killed(deployment, scenario_document):
    d, cluster = deployment
    projector, *_, url = d.start_all()
    # replicas as the services have them
    event_log = await EventLog.connect(Settings(nats_url=cluster.url, stream_replicas=3), "crash-cluster")
    try:
        info = await event_log.js.stream_info(event_log.stream)
        assert info.config.num_replicas == 3 and len(info.cluster.replicas) == 2
        # a tool started without PROMPTGEN_STREAM_REPLICAS ensures the stream too, and leaves its
        # replicas, and the buckets' (the API keys', made at R3 here)
        await ApiKeys.open(event_log)
        tool = await EventLog.connect(Settings(nats_url=cluster.url, stream_replicas=None), "crash-tool")
        try:
            assert await (await ApiKeys.open(tool)).list() == []
        finally:
            await tool.close()
        assert (await event_log.js.stream_info(event_log.stream)).config.num_replicas == 3
        assert (await event_log.js.stream_info("KV_promptgen_api_keys")).config.num_replicas == 3
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            template_id = await create_template(client, scenario_document)
            ids = []
            for _ in range(PERSONAS // 10):
                ids += [p["id"] for p in await create_personas(client, template_id, 10)]
            job = await start_job(client, template_id, cycle_modes(ids))
            part = await read_sse(client, job["sse_endpoint"],
                                  until=lambda msgs: _completed(msgs) >= KILL_AFTER_COMPLETED)
            seen = part.messages
            assert seen[-1].data["type"] != "results", "the job ended before the leader could be killed"
            killed = await _leader(event_log)
            assert killed in cluster.names
            cluster.kill(killed)
            messages = await _to_the_end(client, job["sse_endpoint"], seen)
        assert messages[-1].data["results"]["successful"] == PERSONAS
        ids_seen = [m.id for m in messages]
        assert len(ids_seen) == len(set(ids_seen)), "no message twice across the reconnections"

        new_leader = await eventually(lambda: _leader(event_log), what="a new stream leader")
        assert new_leader != killed
        history = [s async for s in event_log.read(subjects.job_history(job["job_id"]))]
    finally:
        await event_log.close()
    completed = Counter(s.event.persona_id for s in history if s.event.type == "persona.completed")
    assert completed == Counter(ids), "each persona has exactly one PersonaCompleted"
    assert sum(1 for s in history if s.event.type == "job.completed") == 1
    # a new leader is the same log: the projector never took it for a recreated stream
    assert not [line for line in projector.lines() if '"event_log_reset"' in line]


async def test_a_read_of_the_log_waits_while_its_stream_has_no_leader(cluster):
    """What a gateway does when an SSE client comes back while the cluster elects a leader:
    it reads the job's history, and the consumer it asks for cannot be made until the stream
    has a leader. The read waits for one (saying so in the log) and then reads every event,
    instead of ending the client's stream with an error."""
    n1 = cluster.names[0]
    event_log = await EventLog.connect(Settings(nats_url=embedded.nats_url(cluster.ports[n1]), stream_replicas=3),
                                       "crash-no-leader")
    try:
        seqs = [await event_log.publish(PersonaProgress(job_id="jl", persona_id=f"p{i}", attempt=1))
                for i in range(3)]

        async def replicated() -> bool:  # a replica behind at the loss may lead later, before it applied all
            cluster_info = (await event_log.js.stream_info(event_log.stream)).cluster
            followers = (cluster_info.replicas or []) if cluster_info else []
            return len(followers) == 2 and all(f.current and not f.lag for f in followers)

        await eventually(replicated, what="both followers holding the three events")
        for node in cluster.names[1:]:  # two of three gone: no quorum, no leader
            cluster.kill(node)
        with capture_logs() as logs:
            reading = asyncio.ensure_future(_read_all(event_log, subjects.job_history("jl")))
            await eventually(lambda: _true(any(e["event"] == "nats_retry" for e in logs) or reading.done()),
                             timeout=60, what="a read retried while the stream has no leader")
            assert not reading.done(), reading.exception() if not reading.cancelled() else "cancelled"
            cluster.start(cluster.names[1])  # a quorum again
            history = await asyncio.wait_for(reading, 60)
        assert [s.seq for s in history] == seqs
    finally:
        await event_log.close()


async def _read_all(event_log: EventLog, subject: str) -> list:
    return [stored async for stored in event_log.read(subject)]


async def _true(value: bool) -> bool:
    return value
