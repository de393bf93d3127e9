"""What the services rely on of the event log, asserted of EventLog on a real nats-server
and of MemoryEventLog alike: the fake cannot drift from JetStream on any of these."""

from __future__ import annotations

import asyncio
import json
from contextlib import aclosing

import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import api
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from opentelemetry import trace

from contracts import subjects
from contracts.events import JobCancelRequested, TemplateCreated, encode_event
from services.adapters.event_log import Contended, Moved, Precluded, Unchanged, Unless, stored_message
from services.generator.dead_letters import advisory_subject, dead_letter_stream, keep_dead_letters
from services.generator.work import fan_out
from services.testing import MemoryEventLog
from tests.samples import TEMPLATE, job_requested


def on(subject: str) -> Unless:
    """Not stored once an event is on ``subject`` (as an outcome is kept from following a cancel)."""
    return Unless(subject, (subject,))


def template(template_id: str) -> TemplateCreated:
    return TemplateCreated(template_id=template_id, scenario_document="doc", template_data=TEMPLATE)


async def publish_job(log, job_id: str, pids: tuple[str, ...] = ("p1",)) -> list[int]:
    """A job request and its work items; their sequences."""
    request = job_requested(job_id, pids)
    return [await log.publish(e) for e in (request, *fan_out(request))]


async def fetch_until(queue, count: int, timeout: float = 10) -> list:
    """What a worker pool takes from ``queue``, fetching until ``count`` messages arrived."""
    msgs: list = []
    async with asyncio.timeout(timeout):
        while len(msgs) < count:
            try:
                msgs += await queue.fetch(count - len(msgs), timeout=1)
            except (NatsTimeout, TimeoutError):
                continue
    return msgs


def persona_of(msg) -> str:
    return stored_message(msg).event.persona_id


# --- sequences, filters, deduplication -------------------------------------------------


async def test_sequences_grow_in_publish_order_and_read_returns_events_in_order(any_event_log):
    log = any_event_log
    seqs = [await log.publish(template(t)) for t in ("t1", "t2", "t3")]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert await log.last_seq() == seqs[-1]
    stored = [s async for s in log.read(subjects.ALL)]
    assert [s.seq for s in stored] == seqs
    assert [s.event.template_id for s in stored] == ["t1", "t2", "t3"]
    assert stored[0].subject == subjects.template_created("t1") and stored[0].time is not None


async def test_a_recreated_stream_is_another_log_whose_sequences_start_again(any_event_log):
    log = any_event_log
    assert (await log.state()).last_seq == 0
    for t in ("t1", "t2", "t3"):
        await log.publish(template(t))
    before = await log.state()
    assert (before.first_seq, before.last_seq) == (1, 3) and before.log_id
    assert await log.state() == before  # the same log, asked again
    if isinstance(log, MemoryEventLog):
        log.delete_stream(log.stream)
    else:
        await log.js.delete_stream(log.stream)
    await log.ensure_stream()
    await log.publish(template("t4"))
    after = await log.state()
    assert after.last_seq == 1 and after.log_id and after.log_id != before.log_id


async def test_filters_take_nats_wildcards(any_event_log):
    log = any_event_log
    await log.publish(template("t1"))
    j1 = await publish_job(log, "j1", ("p1", "p2"))
    j2 = await publish_job(log, "j2", ("p1",))
    assert [s.seq async for s in log.read(subjects.job_history("j1"))] == j1
    assert [s.seq async for s in log.read(subjects.WORK_ITEMS)] == [*j1[1:], *j2[1:]]
    assert [s.seq async for s in log.read(subjects.JOBS_REQUESTED)] == [j1[0], j2[0]]
    assert [s.seq async for s in log.read("promptgen.job.*.persona.p1.>")] == [j1[1], j2[1]]


async def test_a_repeated_msg_id_is_stored_once(any_event_log):
    log = any_event_log
    event = template("t1")
    first = await log.publish(event)
    again = await log.publish(event.model_copy())  # same dedup id: a retried publish
    assert again == first and await log.last_seq() == first
    assert [s.seq async for s in log.read(subjects.ALL)] == [first]


async def test_a_publish_unless_a_subject_holds_an_event_is_refused_once_it_does(any_event_log):
    """How a persona's outcome is kept from following its job's cancel: the log checks as it
    stores. The same event published again (a retry whose first ack was lost) gets its sequence."""
    log = any_event_log
    cancel = subjects.job("j1", "cancel_requested")
    first = await log.publish(template("t1"), unless=on(cancel))
    assert (await log.at(first)).event.template_id == "t1"
    assert (await log.at(first, leader=True)).event.template_id == "t1"  # as the stream's leader has it
    await log.publish(JobCancelRequested(job_id="j1"))
    with pytest.raises(Precluded):
        await log.publish(template("t2"), unless=on(cancel))
    assert await log.publish(template("t1"), unless=on(cancel)) == first  # stored before the cancel
    assert await log.publish(template("t3"), unless=on(subjects.job("j2", "cancel_requested"))) > first
    assert [s.event.template_id async for s in log.read(subjects.ALL) if s.event.type == "template.created"] \
        == ["t1", "t3"]


async def test_a_publish_on_condition_that_a_filter_is_unchanged_is_refused_once_it_moved(any_event_log):
    """How a job's end is kept from overtaking what it was decided on: stored only while the newest
    message under the job's subjects (a wildcard filter) is the one named; the same end published
    again (its first ack lost) gets its sequence."""
    log = any_event_log
    [request, item] = await publish_job(log, "j1")
    history = subjects.job_history("j1")
    with pytest.raises(Moved):  # decided on the request alone: the work item came after it
        await log.publish(JobCancelRequested(job_id="j1"), unchanged=Unchanged(history, request))
    cancel = JobCancelRequested(job_id="j1")
    stored = await log.publish(cancel, unchanged=Unchanged(history, item))
    assert (await log.at(stored)).event.type == "job.cancel_requested"
    assert await log.publish(cancel, unchanged=Unchanged(history, item)) == stored
    await log.publish(template("t1"))  # another subject: no change to the job's
    assert await log.publish(JobCancelRequested(job_id="j2"), unchanged=Unchanged(subjects.job_history("j2"), 0)) > 0


async def test_garbage_on_the_subject_a_publish_is_unless_does_not_preclude_it(any_event_log):
    """A buggy producer's bytes there are no event; an event there, before or after them, is."""
    log = any_event_log
    cancel = subjects.job("j1", "cancel_requested")
    await log.publish_to(log.stream, cancel, b"{")
    await log.publish_to(log.stream, cancel, b"not json either")
    stored = await log.publish(template("t1"), unless=on(cancel))
    assert (await log.at(stored)).event.template_id == "t1"
    await log.publish(JobCancelRequested(job_id="j1"))
    await log.publish_to(log.stream, cancel, b"\x00")  # garbage after the event: the event still counts
    with pytest.raises(Precluded):
        await log.publish(template("t2"), unless=on(cancel))


async def test_garbage_written_faster_than_a_publish_unless_is_asked_again_delays_it(any_event_log,
                                                                                   monkeypatch):
    """A buggy producer flooding the subject with garbage cannot make the event precluded (the
    caller would drop it as if its job were cancelled): it is not stored yet, and is later."""
    log = any_event_log
    cancel = subjects.job("j1", "cancel_requested")
    newest = log.last_seq_on

    async def flooded(subject: str, **kwargs) -> int | None:
        seen = await newest(subject, **kwargs)
        await log.publish_to(log.stream, cancel, b"{")  # more garbage before the publish is asked again
        return seen

    await log.publish_to(log.stream, cancel, b"{")
    monkeypatch.setattr(log, "last_seq_on", flooded)
    with pytest.raises(Contended):
        await log.publish(template("t1"), unless=on(cancel))
    monkeypatch.undo()  # the flood stops
    stored = await log.publish(template("t1"), unless=on(cancel))
    assert (await log.at(stored)).event.template_id == "t1"


async def test_last_and_at_find_single_events(any_event_log):
    log = any_event_log
    seqs = await publish_job(log, "j1", ("p1", "p2"))
    request_subject = subjects.job("j1", "requested")
    assert (await log.last(request_subject)).seq == seqs[0]
    assert await log.last_seq_on(request_subject) == seqs[0]
    assert await log.last(subjects.job("j1", "completed")) is None
    assert await log.last_seq_on(subjects.job("j1", "completed")) is None
    assert await log.first_readable_on(subjects.job_ends("j1")) is None
    assert (await log.first_readable_on([subjects.job("j9", "requested"), request_subject])).seq == seqs[0]
    at = await log.at(seqs[2])
    assert at.seq == seqs[2] and at.event.persona_id == "p2"
    assert await log.at(seqs[-1] + 100) is None


async def test_read_stops_once_caught_up(any_event_log):
    log = any_event_log
    assert [s async for s in log.read(subjects.ALL)] == []  # an empty log: nothing, and the read ends
    seqs = [await log.publish(template(f"t{i}")) for i in range(25)]
    batches = [b async for b in log.read_batches(subjects.ALL, seqs[10], max_batch=4)]
    assert all(1 <= len(b) <= 4 for b in batches)
    assert [s.seq for b in batches for s in b] == seqs[10:]
    assert [s async for s in log.read(subjects.ALL, seqs[-1] + 1)] == []
    assert [s async for s in log.read(subjects.ALL_JOBS)] == []  # no event matches the filter


async def test_a_page_holds_at_most_its_limit_and_says_whether_more_follow(any_event_log):
    log = any_event_log
    seqs = await publish_job(log, "j1", ("p1", "p2", "p3", "p4"))
    await log.publish(template("t1"))  # another subject between: not in the page
    page, more = await log.read_page(subjects.job_history("j1"), seqs[0], 3)
    assert [s.seq for s in page] == seqs[:3] and more
    page, more = await log.read_page(subjects.job_history("j1"), seqs[3], 3)
    assert [s.seq for s in page] == seqs[3:] and not more
    assert await log.read_page(subjects.job_history("j1"), seqs[-1] + 1, 3) == ([], False)
    assert await log.read_page(subjects.job_history("j9"), 1, 3) == ([], False)


async def test_a_page_of_at_most_some_bytes_ends_with_the_event_that_reaches_them(any_event_log):
    log = any_event_log
    seqs = await publish_job(log, "j1", ("p1", "p2", "p3", "p4"))
    sizes = [len(encode_event(s.event)) for s in (await log.read_page(subjects.job_history("j1"), seqs[0], 10))[0]]
    page, more = await log.read_page(subjects.job_history("j1"), seqs[0], 10, max_bytes=sizes[0] + sizes[1])
    assert [s.seq for s in page] == seqs[:2] and more
    page, more = await log.read_page(subjects.job_history("j1"), seqs[0], 10, max_bytes=1)
    assert [s.seq for s in page] == seqs[:1] and more  # one event at least
    page, more = await log.read_page(subjects.job_history("j1"), seqs[-1], 10, max_bytes=1)
    assert [s.seq for s in page] == seqs[-1:] and not more


async def test_follow_delivers_the_history_then_later_events(any_event_log):
    log = any_event_log
    first = await log.publish(template("t1"))
    seen: list[int] = []
    caught_up = asyncio.Event()

    async def follow() -> None:
        async with aclosing(log.follow_batches(subjects.ALL, first)) as batches:
            async for batch in batches:
                seen.extend(s.seq for s in batch)
                caught_up.set()
                if len(seen) == 3:
                    return

    follower = asyncio.create_task(follow())
    await asyncio.wait_for(caught_up.wait(), 10)
    later = [await log.publish(template("t2")), await log.publish(template("t3"))]
    await asyncio.wait_for(follower, 10)
    assert seen == [first, *later]


async def test_a_follower_can_be_closed_while_waiting(any_event_log):
    log = any_event_log
    await log.publish(template("t1"))
    follower = log.follow(subjects.ALL)
    assert (await anext(follower)).event.template_id == "t1"
    waiting = asyncio.create_task(anext(follower))
    done, _ = await asyncio.wait([waiting], timeout=0.3)
    assert not done  # nothing more: it waits
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    await follower.aclose()


# --- headers: the deduplication id, and the trace context while tracing ---------------------


async def _every_read_of(log, seq: int, subject: str) -> list:
    """The stored event at ``seq`` as each way of reading returns it."""
    queue = await log.work_queue("headers-test", subject, max_ack_pending=1, ack_wait=30, max_deliver=1)
    page, _ = await log.read_page(subject, seq, 1)
    async with aclosing(log.follow(subject, seq)) as follower:
        followed = await anext(follower)
    return [
        *[s async for s in log.read(subject, seq)], await log.last(subject), await log.at(seq), page[0],
        followed, stored_message((await fetch_until(queue, 1))[0]),
    ]


async def test_an_event_is_stored_with_its_msg_id_and_nothing_more_when_untraced(any_event_log):
    log = any_event_log
    event = template("t1")
    with trace.get_tracer("test").start_as_current_span("untraced"):  # no provider: a span that records nothing
        seq = await log.publish(event)
    for stored in await _every_read_of(log, seq, event.subject()):
        assert stored.seq == seq and dict(stored.headers) == {"Nats-Msg-Id": event.dedup_id()}


async def test_a_traced_publish_stores_its_trace_context_for_every_reader(any_event_log, spans):
    log = any_event_log
    event = template("t1")
    with trace.get_tracer("test").start_as_current_span("request") as request:
        seq = await log.publish(event)
    publish = next(s for s in spans.get_finished_spans() if s.name == "publish template.created")
    assert publish.parent.span_id == request.get_span_context().span_id
    assert publish.kind == trace.SpanKind.PRODUCER
    assert publish.attributes["messaging.destination.name"] == event.subject()
    context = publish.context
    traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
    for stored in await _every_read_of(log, seq, event.subject()):
        assert dict(stored.headers) == {"Nats-Msg-Id": event.dedup_id(), "traceparent": traceparent}


async def test_a_duplicate_publish_keeps_the_first_trace_context(any_event_log, spans):
    log = any_event_log
    event = template("t1")
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("first"):
        seq = await log.publish(event)
    first = (await log.at(seq)).headers["traceparent"]
    with tracer.start_as_current_span("retry"):
        assert await log.publish(event.model_copy()) == seq
    assert (await log.at(seq)).headers["traceparent"] == first


# --- work queues ---------------------------------------------------------------------------


async def test_work_queue_ack_nak_and_term(any_event_log):
    log = any_event_log
    await publish_job(log, "j1", ("p1", "p2", "p3"))
    queue = await log.work_queue("contract-workers", subjects.WORK_ITEMS, max_ack_pending=8, ack_wait=10,
                                 max_deliver=5)
    msgs = {persona_of(m): m for m in await fetch_until(queue, 3)}
    assert sorted(msgs) == ["p1", "p2", "p3"]
    assert {m.metadata.num_delivered for m in msgs.values()} == {1}
    await msgs["p1"].ack_sync()
    await msgs["p2"].nak()
    await msgs["p3"].term()
    again = await fetch_until(queue, 1)
    assert [(persona_of(m), m.metadata.num_delivered) for m in again] == [("p2", 2)]
    await again[0].ack()
    with pytest.raises((NatsTimeout, TimeoutError)):
        await queue.fetch(1, timeout=0.5)


async def test_a_nak_with_a_delay_holds_the_message_back(any_event_log):
    log = any_event_log
    await publish_job(log, "j1")
    queue = await log.work_queue("contract-delay", subjects.WORK_ITEMS, max_ack_pending=8, ack_wait=10,
                                 max_deliver=5)
    (msg,) = await fetch_until(queue, 1)
    await msg.nak(delay=1.5)
    with pytest.raises((NatsTimeout, TimeoutError)):
        await queue.fetch(1, timeout=0.3)
    (again,) = await fetch_until(queue, 1)
    assert again.metadata.num_delivered == 2


async def test_an_unacknowledged_message_comes_back_after_ack_wait(any_event_log):
    log = any_event_log
    await publish_job(log, "j1")
    queue = await log.work_queue("contract-ackwait", subjects.WORK_ITEMS, max_ack_pending=8, ack_wait=0.5,
                                 max_deliver=5)
    (first,) = await fetch_until(queue, 1)  # its worker dies: no ack
    (again,) = await fetch_until(queue, 1)
    assert again.metadata.sequence.stream == first.metadata.sequence.stream
    assert again.metadata.num_delivered == 2


async def test_a_durable_consumer_bound_again_takes_the_new_ack_wait(any_event_log):
    """A deployment that lowers the ack wait must not keep the old one in the existing consumer."""
    log = any_event_log
    await publish_job(log, "j1")
    config = dict(max_ack_pending=8, max_deliver=5)
    await log.work_queue("contract-rebind", subjects.WORK_ITEMS, ack_wait=120, **config)
    queue = await log.work_queue("contract-rebind", subjects.WORK_ITEMS, ack_wait=0.5, **config)
    (first,) = await fetch_until(queue, 1)  # its worker dies: no ack
    (again,) = await fetch_until(queue, 1)  # long before the old 120 s
    assert again.metadata.sequence.stream == first.metadata.sequence.stream
    assert again.metadata.num_delivered == 2


async def test_in_progress_keeps_a_message_with_its_worker(any_event_log):
    log = any_event_log
    await publish_job(log, "j1")
    queue = await log.work_queue("contract-progress", subjects.WORK_ITEMS, max_ack_pending=8, ack_wait=1,
                                 max_deliver=5)
    (msg,) = await fetch_until(queue, 1)
    for _ in range(3):  # 1.5 s of work, with an in-progress ack twice a second
        await asyncio.sleep(0.5)
        await msg.in_progress()
    with pytest.raises((NatsTimeout, TimeoutError)):
        await queue.fetch(1, timeout=0.3)
    await msg.ack()


async def test_replicas_share_one_durable_consumer(any_event_log):
    log = any_event_log
    await publish_job(log, "j1", tuple(f"p{i}" for i in range(6)))
    config = dict(max_ack_pending=16, ack_wait=10, max_deliver=5)
    a = await log.work_queue("contract-shared", subjects.WORK_ITEMS, **config)
    b = await log.work_queue("contract-shared", subjects.WORK_ITEMS, **config)
    got = await fetch_until(a, 2) + await fetch_until(b, 4)
    assert sorted(persona_of(m) for m in got) == [f"p{i}" for i in range(6)]
    assert got[0].metadata.num_pending + 1 >= 4  # the consumer counted what was left
    with pytest.raises((NatsTimeout, TimeoutError)):
        await a.fetch(1, timeout=0.3)


async def test_max_ack_pending_caps_unacknowledged_messages(any_event_log):
    log = any_event_log
    await publish_job(log, "j1", ("p1", "p2"))
    queue = await log.work_queue("contract-cap", subjects.WORK_ITEMS, max_ack_pending=1, ack_wait=10,
                                 max_deliver=5)
    (first,) = await fetch_until(queue, 1)
    with pytest.raises((NatsTimeout, TimeoutError)):
        await queue.fetch(1, timeout=0.5)
    await first.ack()
    (second,) = await fetch_until(queue, 1)
    assert persona_of(second) != persona_of(first)


async def test_max_deliveries_are_announced_and_kept_in_the_dead_letter_stream(any_event_log):
    log = any_event_log
    consumer = "contract-dying"
    await keep_dead_letters(log, consumer)
    heard: list = []

    async def hear(msg) -> None:
        heard.append(msg)

    await log.subscribe(advisory_subject(log.stream, consumer), hear)
    seq = (await publish_job(log, "j1"))[1]
    queue = await log.work_queue(consumer, subjects.WORK_ITEMS, max_ack_pending=4, ack_wait=0.5, max_deliver=2)
    deliveries = 0
    async with asyncio.timeout(15):
        while not heard:  # workers keep pulling and die on every delivery
            try:
                deliveries += len(await queue.fetch(1, timeout=1))
            except (NatsTimeout, TimeoutError):
                continue
    assert deliveries == 2
    advisory = json.loads(heard[0].data)
    assert (advisory["stream"], advisory["consumer"], advisory["stream_seq"], advisory["deliveries"]) == (
        log.stream, consumer, seq, 2)
    # kept for the generators' dead-letter consumer, as run_dead_letters reads them
    letters = await log.work_queue("contract-letters", advisory_subject(log.stream, consumer), max_ack_pending=4,
                                   ack_wait=10, max_deliver=-1, stream=dead_letter_stream(log))
    (kept,) = await fetch_until(letters, 1)
    assert json.loads(kept.data)["stream_seq"] == seq
    await kept.ack()


# --- side streams ----------------------------------------------------------------------------


async def test_a_side_stream_keeps_the_newest_message_per_subject_and_purges(any_event_log):
    log = any_event_log
    await log.ensure_stream(api.StreamConfig(name="CONTRACT_SIDE", subjects=["contract_side.>"],
                                             max_msgs_per_subject=1))
    await log.publish_to("CONTRACT_SIDE", "contract_side.a", b"a1")
    await log.publish_to("CONTRACT_SIDE", "contract_side.b", b"b1")
    await log.publish_to("CONTRACT_SIDE", "contract_side.a", b"a2")
    kept = [m.data async for b in log.read_messages("contract_side.*", stream="CONTRACT_SIDE") for m in b]
    assert kept == [b"b1", b"a2"]
    await log.purge("CONTRACT_SIDE", "contract_side.b")
    kept = [m.data async for b in log.read_messages("contract_side.*", stream="CONTRACT_SIDE") for m in b]
    assert kept == [b"a2"]
    assert [s async for s in log.read(subjects.ALL)] == []  # the event log holds none of it


async def test_reading_a_stream_that_does_not_exist_is_not_found(any_event_log):
    with pytest.raises(NotFoundError):
        async for _ in any_event_log.read_messages(">", stream="CONTRACT_NONE"):
            pass


# --- core messages -----------------------------------------------------------------------------


async def test_request_reply_and_no_responders(any_event_log):
    log = any_event_log

    async def echo(msg) -> None:
        await msg.respond(msg.data.upper())

    await log.subscribe("contract.echo", echo)
    assert (await log.request("contract.echo", b"hello", timeout=5)).data == b"HELLO"
    with pytest.raises(NoRespondersError):
        await log.request("contract.nobody", b"hello", timeout=5)


async def test_one_member_of_a_queue_group_answers_each_request(any_event_log):
    log = any_event_log
    answered: list[str] = []

    def member(name: str):
        async def answer(msg) -> None:
            answered.append(name)
            await msg.respond(name.encode())
        return answer

    for name in ("a", "b"):
        await log.subscribe("contract.work", member(name), queue="workers")
    replies = [(await log.request("contract.work", b"", timeout=5)).data.decode() for _ in range(10)]
    assert len(answered) == 10 and sorted(replies) == sorted(answered)


async def test_events_published_to_the_log_reach_core_subscribers(any_event_log):
    log = any_event_log
    seen: dict[str, asyncio.Event] = {"a": asyncio.Event(), "b": asyncio.Event()}
    subjects_seen: list[str] = []

    def on_cancel(name: str):
        async def cb(msg) -> None:
            subjects_seen.append(msg.subject)
            seen[name].set()
        return cb

    for name in seen:
        await log.subscribe(subjects.JOBS_CANCEL_REQUESTED, on_cancel(name))
    await log.publish(JobCancelRequested(job_id="j1"))
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in seen.values())), 5)
    assert subjects_seen == [subjects.job("j1", "cancel_requested")] * 2


# --- key-value -----------------------------------------------------------------------------------


async def test_key_value_compare_and_set(any_event_log):
    kv = await any_event_log.key_value("contract_bucket")
    with pytest.raises(KeyNotFoundError):
        await kv.get("state")
    first = await kv.create("state", b"1")
    with pytest.raises(KeyWrongLastSequenceError):
        await kv.create("state", b"again")
    second = await kv.update("state", b"2", last=first)
    assert second > first
    with pytest.raises(KeyWrongLastSequenceError):
        await kv.update("state", b"3", last=first)  # someone else won the round
    with pytest.raises(KeyWrongLastSequenceError):
        await kv.update("state", b"3")  # no revision named: as if there were no entry
    entry = await kv.get("state")
    assert (entry.value, entry.revision) == (b"2", second)
    same = await any_event_log.key_value("contract_bucket")  # opened again, as another process does
    assert (await same.get("state")).revision == second


# --- a core publish (rebuild progress, replies) -------------------------------------------------


async def test_a_core_send_reaches_subscribers_and_is_not_stored(any_event_log):
    log = any_event_log
    heard = asyncio.Event()

    async def on_message(msg) -> None:
        if msg.data == b"progress":
            heard.set()

    before = await log.last_seq()
    await log.subscribe("contract_control.rebuild", on_message)
    await log.send("contract_control.rebuild", b"progress")
    await asyncio.wait_for(heard.wait(), 5)
    assert await log.last_seq() == before
