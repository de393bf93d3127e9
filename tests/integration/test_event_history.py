"""GET /scenario/v2/jobs/{job_id}/events, a page at a time."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from contracts import subjects
from contracts.events import PersonaProgress, encode_event
from services.adapters.event_log import PullFailed
from tests.samples import job_requested


async def _job_with_events(event_log, job_id: str, progress: int) -> list[int]:
    """A job's request and ``progress`` events after it; their sequences."""
    job = job_requested(job_id, ("a",)).model_copy(update={"deadline": datetime.now(UTC) + timedelta(hours=1)})
    seqs = [await event_log.publish(job)]
    for attempt in range(1, progress + 1):
        seqs.append(await event_log.publish(PersonaProgress(job_id=job_id, persona_id="a", attempt=attempt)))
    return seqs


async def test_pages_follow_one_another_to_the_end(lone_gateway, event_log):
    _, client = lone_gateway
    await _job_with_events(event_log, "other", 3)  # interleaved in the log, never in the pages
    seqs = await _job_with_events(event_log, "paged", 24)
    pages, after = [], 0
    while after is not None:
        r = await client.get("/scenario/v2/jobs/paged/events", params={"after": after, "limit": 10})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["job_id"] == "paged"
        pages.append([e["seq"] for e in body["events"]])
        after = body["next_after"]
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [seq for page in pages for seq in page] == seqs
    default = (await client.get("/scenario/v2/jobs/paged/events")).json()
    assert len(default["events"]) == 25 and default["next_after"] is None  # the default page holds 100
    for bad in ({"limit": 0}, {"limit": 1001}, {"after": -1}, {"after": 2**64 - 1}, {"after": 10**23}):
        r = await client.get("/scenario/v2/jobs/paged/events", params=bad)
        assert r.status_code == 422 and r.json()["field"] == next(iter(bad)), r.text
    past = await client.get("/scenario/v2/jobs/paged/events", params={"after": 2**63 - 1})
    assert past.status_code == 200 and past.json()["events"] == []  # the largest a log can hold: nothing after


async def test_a_page_ends_once_its_events_hold_the_page_bytes(lone_gateway, event_log, monkeypatch):
    """Each work item holds its job's whole template: a page of 1,000 of them would hold as many
    copies. The page ends with the event that reaches its bytes, and says where to go on."""
    from services.gateway import history

    _, client = lone_gateway
    seqs = await _job_with_events(event_log, "heavy", 9)
    page, _ = await event_log.read_page(subjects.job_history("heavy"), 1, 10)
    sizes = [len(encode_event(stored.event)) for stored in page]  # as the log holds them
    progress = sizes[1]
    assert set(sizes[1:]) == {progress} and sizes[0] >= 3 * progress  # the request, then nine alike
    monkeypatch.setattr(history, "PAGE_BYTES", 3 * progress)
    pages, after = [], 0
    while after is not None:
        body = (await client.get("/scenario/v2/jobs/heavy/events", params={"after": after, "limit": 1000})).json()
        pages.append([e["seq"] for e in body["events"]])
        after = body["next_after"]
    assert [len(p) for p in pages] == [1, 3, 3, 3] and [seq for page in pages for seq in page] == seqs


async def test_reading_a_page_does_not_read_the_rest_of_the_history(event_log):
    await _job_with_events(event_log, "long", 300)
    received = event_log.nc.stats["in_msgs"]
    page, more = await event_log.read_page(subjects.job_history("long"), 1, 10)
    assert [stored.event.type for stored in page] == ["job.requested"] + ["persona.progress"] * 9 and more
    # the page, and a few JetStream API answers: not the 291 events after it
    assert event_log.nc.stats["in_msgs"] - received < 30


async def test_a_pull_hands_over_exactly_what_it_asked_for_in_batches_then_stops_at_the_end(event_log):
    seqs = await _job_with_events(event_log, "pulled", 299)
    batches = [batch async for batch in event_log.pull(subjects.job_history("pulled"), seqs[0], 250, max_batch=100)]
    assert all(0 < len(batch) <= 100 for batch in batches)
    assert [msg.metadata.sequence.stream for batch in batches for msg in batch] == seqs[:250]
    rest = [msg async for batch in event_log.pull(subjects.ALL, seqs[250], 1000) for msg in batch]
    assert [msg.metadata.sequence.stream for msg in rest] == seqs[250:]  # fewer than asked: the log's end


async def test_a_short_page_says_no_more_follow_even_when_events_came_while_it_was_read(event_log):
    """Events stored after a page's read began are the next read's: a short page does not say
    more follow (a client that pages until no more follow would stop polling for good)."""
    seqs = await _job_with_events(event_log, "growing", 2)
    add_consumer = event_log.js.add_consumer

    async def then_one_more(*args, **kwargs):
        info = await add_consumer(*args, **kwargs)
        await event_log.publish(PersonaProgress(job_id="growing", persona_id="a", attempt=3))
        return info

    event_log.js.add_consumer = then_one_more
    try:
        page, more = await event_log.read_page(subjects.job_history("growing"), seqs[0], 10)
    finally:
        event_log.js.add_consumer = add_consumer
    assert [stored.seq for stored in page] == seqs and not more
    page, more = await event_log.read_page(subjects.job_history("growing"), seqs[-1] + 1, 10)
    assert [stored.event.attempt for stored in page] == [3] and not more


async def test_a_pull_of_large_events_asks_again_whenever_a_request_is_full_of_bytes(event_log):
    """Each request brings at most ``max_bytes``: a batch of large events cannot outgrow what a
    subscription may hold (NATS drops the messages of a slow consumer). The read goes on."""
    large = b"x" * 400_000
    seqs = [(await event_log.js.publish("promptgen.job.large.blob", large)).seq for _ in range(7)]
    batches = [batch async for batch in event_log.pull("promptgen.job.large.>", seqs[0], 100,
                                                        max_bytes=1_000_000)]
    assert [msg.metadata.sequence.stream for batch in batches for msg in batch] == seqs
    assert max(len(batch) for batch in batches) <= 2  # two of them fill a request
    assert event_log.pull_max_bytes() >= 2 * event_log.nc.max_payload

    with pytest.raises(PullFailed, match=rf"after sequence {seqs[0] - 1} is larger than the 100000 bytes"):
        async for _ in event_log.pull("promptgen.job.large.>", seqs[0], 100, max_bytes=100_000):
            pass


async def test_a_pull_request_filled_to_its_last_byte_is_asked_again(event_log):
    """The server ends a request its last event fills exactly without a word: the read asks
    again after a quiet moment, instead of waiting for its timeout and ending short."""
    import json

    from nats.js import api

    seqs = [(await event_log.js.publish("promptgen.job.exact.blob", b"y" * 1000)).seq for _ in range(5)]
    # What the server counts for one event (subject, reply, headers, data): what a request of
    # one event leaves of its max_bytes says so.
    info = await event_log.js.add_consumer(event_log.stream, config=api.ConsumerConfig(
        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=seqs[0],
        filter_subject="promptgen.job.exact.>", ack_policy=api.AckPolicy.NONE))
    inbox = event_log.nc.new_inbox()
    sub = await event_log.nc.subscribe(inbox)
    await event_log.nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{event_log.stream}.{info.name}",
                               json.dumps({"batch": 1, "no_wait": True, "max_bytes": 10_000_000}).encode(),
                               reply=inbox)
    status = None
    while status is None:
        msg = await sub.next_msg(timeout=5)
        if msg.headers and msg.headers.get("Status"):
            status = msg
    await sub.unsubscribe()
    size = 10_000_000 - int(status.headers["Nats-Pending-Bytes"])

    for max_bytes in (2 * size - 1, 2 * size, 2 * size + 1):  # two events fill a request exactly
        pulled = [msg.metadata.sequence.stream
                  async for batch in event_log.pull("promptgen.job.exact.>", seqs[0], 100, max_bytes=max_bytes,
                                                    timeout=3, quiet=0.2)
                  for msg in batch]
        assert pulled == seqs, max_bytes


async def test_a_pull_whose_request_is_slow_to_answer_waits_for_it_and_reads_everything(event_log, nats_server):
    """A quiet moment while the server still holds the request (a loaded server, a slow link)
    is not the request's end: asking again then would pile requests up, and the server refuses
    a no-wait request that asks for more than the earlier ones leave ("408 Requests Pending"),
    which once ended the read with nothing. Here the server stops for a while at the first request."""
    import os
    import signal

    if nats_server is None:
        pytest.skip("the NATS server is not ours to stop (NATS_URL)")
    seqs = await _job_with_events(event_log, "slow", 149)
    publish, stopped = event_log.nc.publish, []

    async def stopping_at_the_first_request(subject, payload=b"", reply="", headers=None):
        if ".CONSUMER.MSG.NEXT." in subject and not stopped:
            stopped.append(subject)
            os.kill(nats_server.proc.pid, signal.SIGSTOP)
            asyncio.get_running_loop().call_later(0.7, os.kill, nats_server.proc.pid, signal.SIGCONT)
        return await publish(subject, payload, reply=reply, headers=headers)

    event_log.nc.publish = stopping_at_the_first_request
    try:
        pulled = [msg.metadata.sequence.stream
                  async for batch in event_log.pull(subjects.job_history("slow"), seqs[0], 200, timeout=10,
                                                    quiet=0.2)  # three quiet moments while it is stopped
                  for msg in batch]
    finally:
        event_log.nc.publish = publish
        os.kill(nats_server.proc.pid, signal.SIGCONT)
    assert stopped and pulled == seqs
