"""One trace per job: the HTTP request that starts it, the log (``traceparent`` in the NATS
headers), the generator's LLM calls, the projector's writes and the SSE messages, on a real
nats-server and MongoDB-wire server, with the services in this process recording into one
in-memory exporter."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest_asyncio

from tests.conftest import InProcessSystem
from tests.flows import create_personas, create_template, cycle_modes, start_job
from tests.sse_client import read_sse
from tests.waiting import eventually

START = "POST /scenario/v2/generate-final-prompts"
STREAM = "GET /scenario/v2/prompt-generation-status/{job_id}"


@pytest_asyncio.fixture
async def traced(spans, settings, models):
    """The services started after the exporter is installed (the gateway's HTTP spans are
    wired when its app is made)."""
    system = await InProcessSystem(settings).start()
    yield system
    await system.close()


def _ancestors(span, by_id: dict) -> list:
    chain = []
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        chain.append(span)
    return chain


async def test_one_trace_spans_gateway_generator_and_projector_for_one_job(traced, spans, scenario_document):
    async with httpx.AsyncClient(base_url=traced.base_url, timeout=30) as client:
        template_id = await create_template(client, scenario_document)
        ids = [p["id"] for p in await create_personas(client, template_id, 3)]
        job = await start_job(client, template_id, cycle_modes(ids))
        stream = await read_sse(client, job["sse_endpoint"])
    assert stream.messages[-1].data["type"] == "results"
    job_id = job["job_id"]

    async def job_trace():
        finished = spans.get_finished_spans()
        starts = [s for s in finished if s.name == START]
        if len(starts) != 1:
            return None
        trace_id = starts[0].context.trace_id
        found = [s for s in finished if s.context.trace_id == trace_id]
        names = Counter(s.name for s in found)
        # the last things to happen: the projector writes the job's end, every SSE message is out
        streamed = any(s.name == STREAM for s in finished)
        if names["project job.completed"] and names["sse deliver job.completed"] and streamed:
            return starts[0], found
        return None

    start, found = await eventually(job_trace, what="the job's end written and delivered in the request's trace")
    names = Counter(s.name for s in found)

    # gateway: the request, its publish, and the SSE messages of the job
    assert names["publish job.requested"] == 1
    assert names["sse deliver job.requested"] == 1 and names["sse deliver persona.completed"] == 3
    # generator: the fan-out, one work item and one LLM call per persona, each outcome published
    assert names["dispatch job.requested"] == 1 and names["publish persona.prompt_requested"] == 3
    assert names["generate persona"] == 3 and names["llm call"] == 3
    assert names["publish persona.progress"] == 3 and names["publish persona.completed"] == 3
    # projector: each event written, the job decided and its end published
    assert names["project job.requested"] == 1 and names["project persona.completed"] == 3
    assert names["decide job"] >= 1 and names["publish job.completed"] == 1

    calls = [s for s in found if s.name == "llm call"]
    assert {s.attributes["promptgen.persona_id"] for s in calls} == set(ids)
    for call in calls:
        assert call.attributes["promptgen.outcome"] == "ok"
        assert call.attributes["gen_ai.request.model"] and call.attributes["gen_ai.system"] == "offline"
        assert call.attributes["gen_ai.usage.output_tokens"] > 0
        assert not any("prompt" in str(v).lower() and len(str(v)) > 200 for v in call.attributes.values())

    # every span descends from the request: gateway -> generator -> projector -> gateway, through the log
    by_id = {s.context.span_id: s for s in found}
    assert start.parent is None
    for span in found:
        if span is not start:
            assert _ancestors(span, by_id)[-1] is start, span.name
    write = next(s for s in found if s.name == "project persona.completed")
    chain = [s.name for s in _ancestors(write, by_id)]
    assert chain[:4] == ["publish persona.completed", "generate persona", "publish persona.prompt_requested",
                         "dispatch job.requested"]
    assert chain[-2:] == ["publish job.requested", START]

    # every span naming this job is in this one trace
    named = [s for s in spans.get_finished_spans() if s.attributes.get("promptgen.job_id") == job_id]
    assert named and {s.context.trace_id for s in named} == {start.context.trace_id}

    # the SSE messages link to the request holding the stream (its own trace)
    streams = {s.context.span_id for s in spans.get_finished_spans() if s.name == STREAM}
    for delivery in (s for s in found if s.name.startswith("sse deliver")):
        assert {link.context.span_id for link in delivery.links} & streams


async def test_a_stream_token_never_goes_into_a_span(traced, spans):
    """The token in a stream's URL opens the job's stream until it expires: whoever reads the
    traces must not find it there."""
    async with httpx.AsyncClient(base_url=traced.base_url, timeout=30) as client:
        await client.get("/scenario/v2/prompt-generation-status/no-such-job",
                         params={"token": "1.acme.k1.s3cr3t-signature", "seen": "yes"})
        await client.get("/scenario/v2/prompt-generation-status/no-such-job?%74oken=1.acme.k1.other-signature")

    async def recorded():
        found = [s for s in spans.get_finished_spans() if s.name == STREAM]
        return found if len(found) == 2 else None

    for span in await eventually(recorded, what="the requests' spans"):
        shown = " ".join(str(v) for v in span.attributes.values())
        assert "signature" not in shown and "token=REDACTED" in shown, shown
    assert "seen=yes" in " ".join(str(v) for v in (await recorded())[0].attributes.values())
