"""The gateway's live feed never stops on one event: an undecodable event on one job's
subject ends that job's SSE streams only, and the feed goes on for every other job."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from datetime import UTC, datetime, timedelta

import pytest

from contracts import subjects
from contracts.events import JobCompleted, PersonaFailed
from tests.samples import job_requested, results
from tests.sse_client import read_sse
from tests.waiting import eventually

GARBAGE = b"\xff not json"


def _sse(job_id: str) -> str:
    return f"/scenario/v2/prompt-generation-status/{job_id}"


def _opened(event: asyncio.Event):
    """An ``until`` for read_sse that notes the first message and reads on."""

    def until(messages) -> bool:
        event.set()
        return False

    return until


async def _requested(event_log, *job_ids: str) -> None:
    for job_id in job_ids:
        job = job_requested(job_id, (f"{job_id}-p",))
        await event_log.publish(job.model_copy(update={"deadline": datetime.now(UTC) + timedelta(hours=1)}))


async def _fails(event_log, job_id: str) -> None:
    """Its one persona fails, and so does the job."""
    persona_id = f"{job_id}-p"
    await event_log.publish(PersonaFailed(job_id=job_id, persona_id=persona_id, persona_name=persona_id,
                                          mode="try_mode", error="LLM timeout", error_code="llm_timeout"))
    await event_log.publish(JobCompleted(job_id=job_id, status="failed", results=results({persona_id: "failed"})))


async def test_an_undecodable_event_ends_only_its_own_jobs_streams(lone_gateway, event_log, settings):
    system, client = lone_gateway
    await _requested(event_log, "good", "bad")
    feeds = system.server.config.app.state.gateway.feeds
    opened = {job_id: asyncio.Event() for job_id in ("good", "bad")}
    streams = {job_id: asyncio.create_task(read_sse(client, _sse(job_id), until=_opened(opened[job_id])))
               for job_id in opened}
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in opened.values())), 20)  # both followed live

    # A newer producer's event on the good job is skipped; garbage on the bad job ends its streams.
    future = b'{"type": "persona.mood_changed", "version": 1, "job_id": "good", "mood": "calm"}'
    await event_log.js.publish("promptgen.job.good.persona.good-p.mood", future, stream=settings.stream)
    await event_log.js.publish("promptgen.job.bad.persona.bad-p.progress", GARBAGE, stream=settings.stream)
    await _fails(event_log, "good")

    good = await asyncio.wait_for(streams["good"], 30)
    assert [m.data["type"] for m in good.messages] == ["status_update", "persona_progress", "status_update",
                                                       "results"]
    bad = await asyncio.wait_for(streams["bad"], 30)
    assert [m.data["type"] for m in bad.messages] == ["status_update"]  # ended, without results
    assert feeds.alive and "bad" not in feeds.channels


async def test_a_job_whose_history_holds_an_undecodable_event_is_still_served(lone_gateway, event_log, settings):
    """A browser reconnecting after its stream ended on a bad event reads the job from the
    log: the bad event is skipped (and logged), everything else arrives."""
    _, client = lone_gateway
    await _requested(event_log, "bad")
    await event_log.js.publish("promptgen.job.bad.persona.bad-p.progress", GARBAGE, stream=settings.stream)
    await _fails(event_log, "bad")
    stream = await asyncio.wait_for(read_sse(client, _sse("bad")), 30)
    assert stream.status == 200
    assert [m.data["type"] for m in stream.messages] == ["status_update", "persona_progress", "status_update",
                                                         "results"]


async def _types(watcher) -> list[str]:
    return [stored.event.type async for batch in watcher for stored, _, _ in batch]


async def test_a_dispatch_loop_that_dies_is_logged_and_resumes_where_it_was(event_log):
    from structlog.testing import capture_logs

    from services.gateway.feeds import JobFeeds

    await _requested(event_log, "j")
    feeds = JobFeeds(event_log)
    dispatch, deaths = feeds._dispatch, []

    async def dies_once() -> None:  # a bug in the loop, on the first message it takes
        if not deaths:
            async with aclosing(event_log.follow_batches(subjects.ALL_JOBS, feeds._position + 1)) as batches:
                await anext(batches)
            deaths.append(True)
            raise RuntimeError("a bug")
        await dispatch()

    feeds._dispatch = dies_once
    await feeds.start()
    try:
        watcher = feeds.watch("j", 1)
        history = await anext(watcher)
        assert [stored.event.type for stored, _, _ in history] == ["job.requested"]
        with capture_logs() as logs:
            await _fails(event_log, "j")
            rest = await asyncio.wait_for(_types(watcher), 20)
        assert rest == ["persona.failed", "job.completed"]  # nothing lost by the death
        assert deaths and feeds.alive
        assert any(e["event"] == "job_feed_died" and e["log_level"] == "error" for e in logs)
    finally:
        await feeds.close()


async def test_an_idle_stream_gets_keep_alive_comments_and_a_client_that_leaves_frees_its_channel(
        lone_gateway, event_log, settings):
    """Keep-alive comes from the feed's one timer (sse_ping_seconds is 1 here), not a timer per
    client; a client that closes its connection is noticed at once, though nothing is written."""
    system, client = lone_gateway
    await _requested(event_log, "idle")
    feeds = system.server.config.app.state.gateway.feeds
    async with client.stream("GET", _sse("idle")) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        lines = resp.aiter_lines()
        seen: list[str] = []
        while ": ping" not in seen:  # the job's first message, then a comment while nothing happens
            seen.append(await asyncio.wait_for(anext(lines), 20))
        assert any(line.startswith("data:") for line in seen[: seen.index(": ping")])
        assert feeds.channels["idle"].watchers == 1
        await lines.aclose()

    async def freed() -> bool:
        return "idle" not in feeds.channels and system.server.config.app.state.gateway.capacity.sse_streams.in_use == 0

    await eventually(freed, what="the channel and the stream slot given back")


async def test_a_server_shutting_down_ends_every_stream(lone_gateway, event_log):
    """uvicorn told to exit: open streams end (their browsers reconnect elsewhere with Last-Event-ID)."""
    system, client = lone_gateway
    await _requested(event_log, "long")
    feeds = system.server.config.app.state.gateway.feeds
    opened = asyncio.Event()
    stream = asyncio.create_task(read_sse(client, _sse("long"), until=_opened(opened)))
    await asyncio.wait_for(opened.wait(), 20)
    feeds.exiting = lambda: True
    ended = await asyncio.wait_for(stream, 20)
    assert [m.data["type"] for m in ended.messages] == ["status_update"]  # ended, without results
    assert "long" not in feeds.channels


async def test_a_job_this_gateway_follows_is_still_refused_to_another_tenant(settings, event_log):
    """Once a job has a channel here, its stream is opened without a lookup: whose it is comes
    from the channel's request event, and another tenant still gets 404."""
    import httpx
    from pydantic import SecretStr

    from services.adapters.api_keys import SCOPES, ApiKeys
    from tests.conftest import InProcessSystem

    settings.auth, settings.projection_wait_seconds = "required", 0
    settings.stream_token_secret = SecretStr("s3cret-for-tests")
    keys = await ApiKeys.open(event_log)
    _, acme = await keys.create("acme", list(SCOPES))
    _, globex = await keys.create("globex", list(SCOPES))
    job = job_requested("owned", ("owned-p",))
    deadline = datetime.now(UTC) + timedelta(hours=1)
    await event_log.publish(job.model_copy(update={"tenant": "acme", "deadline": deadline}))
    system = await InProcessSystem(settings).start(generator=False)
    try:
        async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:
            feeds = system.server.config.app.state.gateway.feeds
            opened = asyncio.Event()
            first = asyncio.create_task(read_sse(client, _sse("owned"), headers={"Authorization": f"Bearer {acme}"},
                                                 until=_opened(opened)))
            await asyncio.wait_for(opened.wait(), 20)
            assert feeds.requested("owned") is not None  # followed: the next request takes it from here
            foreign = await client.get(_sse("owned"), headers={"Authorization": f"Bearer {globex}"})
            assert foreign.status_code == 404 and foreign.json()["code"] == "job_not_found"
            second = asyncio.create_task(read_sse(client, _sse("owned"), headers={"Authorization": f"Bearer {acme}"}))
            await _fails(event_log, "owned")
            for stream in await asyncio.wait_for(asyncio.gather(first, second), 30):
                assert stream.status == 200
                assert [m.data["type"] for m in stream.messages] == ["status_update", "persona_progress",
                                                                     "status_update", "results"]
    finally:
        await system.close()


async def test_an_event_after_a_jobs_end_neither_follows_its_results_nor_holds_its_stream_open(lone_gateway,
                                                                                             event_log):
    """A call in flight when its job was cancelled ends after the job: a stream reading that
    history (a browser reconnecting) still ends with the results, and shows nothing after them."""
    _, client = lone_gateway
    await _requested(event_log, "late")
    await event_log.publish(JobCompleted(job_id="late", status="failed", results=results({"late-p": "failed"})))
    await event_log.publish(PersonaFailed(job_id="late", persona_id="late-p", persona_name="late-p",
                                          mode="try_mode", error="LLM timeout", error_code="llm_timeout"))
    stream = await asyncio.wait_for(read_sse(client, _sse("late")), 30)
    assert [m.data["type"] for m in stream.messages] == ["status_update", "status_update", "results"]


async def test_the_feed_decodes_only_events_a_client_here_can_be_shown(lone_gateway, event_log, settings,
                                                                        monkeypatch):
    """Events of jobs nobody follows on this gateway, and work items (never shown), are passed
    over by subject: a gateway does not decode the whole flow of every job. A watched job's
    stream is still complete."""
    from services.adapters import event_log as event_log_module
    from services.generator.work import fan_out

    system, client = lone_gateway
    feeds = system.server.config.app.state.gateway.feeds
    decoded: list[str] = []
    parse = event_log_module.parse_event

    def counting(data):
        event = parse(data)
        decoded.append(event.type)
        return event

    await _requested(event_log, "watched", "unwatched")
    opened = asyncio.Event()
    stream = asyncio.create_task(read_sse(client, _sse("watched"), until=_opened(opened)))
    await asyncio.wait_for(opened.wait(), 20)
    monkeypatch.setattr(event_log_module, "parse_event", counting)  # the live feed's decoding from here
    for job_id in ("watched", "unwatched"):
        for item in fan_out(job_requested(job_id, (f"{job_id}-p",))):
            await event_log.publish(item)
    await _fails(event_log, "unwatched")
    await _fails(event_log, "watched")
    watched = await asyncio.wait_for(stream, 30)
    assert [m.data["type"] for m in watched.messages] == ["status_update", "persona_progress", "status_update",
                                                          "results"]
    assert sorted(decoded) == ["job.completed", "persona.failed"], decoded  # the watched job's two, no others
    assert feeds.alive


async def test_a_jobs_end_goes_out_with_what_came_before_it_without_a_projector(event_log):
    """A job's end is sent as soon as the log has it, in the same write as what was read with it:
    no projector runs here (a read after ``results`` waits for it instead: test_read_fence.py)."""
    from services.gateway.feeds import JobFeeds
    from services.gateway.sse import stream_job_events

    await _requested(event_log, "j")
    await _fails(event_log, "j")  # the whole history, end included, is one read
    feeds = JobFeeds(event_log)
    await feeds.start()
    try:
        async with aclosing(stream_job_events(feeds, "j", start_seq=1, after=None)) as stream:
            first = await asyncio.wait_for(anext(stream), 20)
            assert b'"persona_progress"' in first and b'"results"' in first
            with pytest.raises(StopAsyncIteration):
                await asyncio.wait_for(anext(stream), 20)
    finally:
        await feeds.close()


async def test_a_watched_jobs_channel_keeps_no_event_a_client_is_not_shown(lone_gateway, event_log):
    """Each work item holds its job's whole template: a job's channel, which lives as long as
    anyone watches the job, keeps what its clients are shown and no work item or cancel."""
    from contracts.events import JobCancelRequested
    from services.generator.work import fan_out

    system, client = lone_gateway
    feeds = system.server.config.app.state.gateway.feeds
    await _requested(event_log, "big")
    for item in fan_out(job_requested("big", ("big-p",))):  # in the history its first watcher reads
        await event_log.publish(item)
    opened = asyncio.Event()
    stream = asyncio.create_task(read_sse(client, _sse("big"), until=_opened(opened)))
    await asyncio.wait_for(opened.wait(), 20)
    channel = feeds.channels["big"]
    await event_log.publish(JobCancelRequested(job_id="big"))  # live, and shown to nobody
    await _fails(event_log, "big")
    watched = await asyncio.wait_for(stream, 30)
    assert [m.data["type"] for m in watched.messages] == ["status_update", "persona_progress", "status_update",
                                                          "results"]
    kept = [stored.event.type for stored in channel.events]
    assert kept == ["job.requested", "persona.failed", "job.completed"], kept
