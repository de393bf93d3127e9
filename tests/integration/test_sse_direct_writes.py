"""A caught-up SSE client is written to by its job's feed itself, past its stream's task: every
client still gets exactly its job's messages, once each and in order, and a client that stops
reading goes back to its own task, which waits for it, so the gateway holds no more for it
than its connection's buffer."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from contracts.events import JobCompleted, PersonaFailed
from services.adapters.event_log import StoredEvent
from services.gateway.feeds import JobChannel, JobFeeds
from tests.samples import job_requested, results
from tests.sse_client import read_sse
from tests.waiting import eventually


def _sse(job_id: str) -> str:
    return f"/scenario/v2/prompt-generation-status/{job_id}"


async def _requested(event_log, job_id: str, personas: int = 1) -> None:
    job = job_requested(job_id, tuple(f"{job_id}-p{i}" for i in range(personas)))
    await event_log.publish(job.model_copy(update={"deadline": datetime.now(UTC) + timedelta(hours=1)}))


def _place(message_id: str) -> tuple[int, int]:
    """Where a message id is in a job's stream: ``<seq>-<index>`` comes before ``<seq>``, its event's last."""
    seq, _, index = message_id.partition("-")
    return int(seq), int(index) if index else 1 << 30


def _failed(job_id: str, i: int, error: str = "LLM timeout") -> PersonaFailed:
    return PersonaFailed(job_id=job_id, persona_id=f"{job_id}-p{i}", persona_name=f"p{i}", mode="try_mode",
                         error=error, error_code="llm_timeout")


def _end(job_id: str, personas: int) -> JobCompleted:
    return JobCompleted(job_id=job_id, status="failed",
                        results=results({f"{job_id}-p{i}": "failed" for i in range(personas)}))


async def test_caught_up_streams_are_written_by_the_feed_and_each_gets_exactly_its_jobs_messages(
        lone_gateway, event_log):
    system, client = lone_gateway
    feeds = system.server.config.app.state.gateway.feeds
    await _requested(event_log, "j", personas=3)
    await event_log.publish(_failed("j", 0))
    streams = [asyncio.create_task(read_sse(client, _sse("j"))) for _ in range(4)]
    # One more resumes inside the history, after the first message: it is tapped once caught up.
    resumed = asyncio.create_task(read_sse(client, _sse("j"), headers={"Last-Event-ID": "1"}))

    async def all_tapped() -> bool:
        channel = feeds.channels.get("j")
        return channel is not None and len(channel.tapped) == 5

    await eventually(all_tapped, what="every stream written by the feed")
    await event_log.publish(_failed("j", 1))
    await event_log.publish(_failed("j", 2))
    await event_log.publish(_end("j", 3))

    whole = ["status_update", "persona_progress", "persona_progress", "persona_progress", "status_update",
             "results"]
    for stream in await asyncio.wait_for(asyncio.gather(*streams), 30):
        assert [m.data["type"] for m in stream.messages] == whole
        ids = [m.id for m in stream.messages]
        assert ids == sorted(ids, key=_place) and len(set(ids)) == len(ids)
    assert [m.data["type"] for m in (await asyncio.wait_for(resumed, 30)).messages] == whole[1:]

    async def freed() -> bool:
        return "j" not in feeds.channels

    await eventually(freed, what="the job's channel given back after its end")


class _Tap:
    """A stand-in for a client's connection (the feed's side is under test here): records what
    is written, and refuses writes while ``full``."""

    def __init__(self) -> None:
        self.full = False
        self.bodies: list[bytes] = []
        self.pings = 0

    def takes_all_after(self, seq: int) -> bool:
        return True

    def writable(self) -> bool:
        return not self.full

    def send(self, body: bytes, events: Sequence[StoredEvent], messages: int) -> bool:
        if self.full:
            return False
        self.bodies.append(body)
        return True

    def ping(self) -> None:
        self.pings += 1


@dataclass
class _Watching:
    feeds: JobFeeds
    channel: JobChannel
    tap: _Tap
    watcher: AsyncIterator
    history: list  # the first batch, from the watcher's own task
    from_task: asyncio.Task  # its next batch from its task, once the feed gives it back


@asynccontextmanager
async def _tapped_watcher(event_log, job_id: str, personas: int) -> AsyncIterator[_Watching]:
    """A feed of its own, and a watcher of a job of ``personas`` with a :class:`_Tap`, past the
    job's history and tapped."""
    await _requested(event_log, job_id, personas=personas)
    feeds = JobFeeds(event_log)
    await feeds.start()
    tap = _Tap()
    try:
        async with aclosing(feeds.watch(job_id, 1, tap=tap)) as watcher:
            history = await asyncio.wait_for(anext(watcher), 20)  # from its task: not caught up yet
            from_task = asyncio.create_task(anext(watcher))
            channel = feeds.channels[job_id]
            await eventually(_async(lambda: len(channel.tapped) == 1), what="the watcher tapped")
            yield _Watching(feeds, channel, tap, watcher, history, from_task)
    finally:
        await feeds.close()


async def test_a_client_the_feed_cannot_write_to_now_gets_the_rest_from_its_task_and_is_tapped_again(event_log):
    async with _tapped_watcher(event_log, "j", personas=3) as w:
        tap, channel = w.tap, w.channel
        assert [stored.event.type for stored, _, _ in w.history] == ["job.requested"]

        await event_log.publish(_failed("j", 0))
        await eventually(_async(lambda: len(tap.bodies) == 1), what="the feed's write")
        assert b'"persona_progress"' in tap.bodies[0] and not w.from_task.done()

        tap.full = True  # the client's buffer is full: the next event comes from its task
        await event_log.publish(_failed("j", 1))
        batch = await asyncio.wait_for(w.from_task, 20)
        assert [stored.event.type for stored, _, _ in batch] == ["persona.failed"]
        assert len(tap.bodies) == 1 and not channel.tapped

        tap.full = False  # caught up again: tapped again, and the end is written by the feed
        ended = asyncio.create_task(anext(w.watcher))
        await eventually(_async(lambda: len(channel.tapped) == 1), what="the watcher tapped again")
        channel.beat()
        assert tap.pings == 1
        await event_log.publish(_failed("j", 2))
        await event_log.publish(_end("j", 3))
        await eventually(_async(lambda: b'"type":"results"' in b"".join(tap.bodies)), what="the end written")
        try:
            await asyncio.wait_for(ended, 20)
            raise AssertionError("the watcher yielded after its job's end was written")
        except StopAsyncIteration:
            pass
    written = b"".join(tap.bodies)
    assert written.count(b'"type":"persona_progress"') == 2 and written.count(b'"type":"results"') == 1
    assert written.rindex(b'"type":"persona_progress"') < written.index(b'"type":"results"')


def _async(check):
    async def run() -> bool:
        return check()

    return run


async def test_a_client_that_stops_reading_goes_back_to_its_task_and_the_gateway_holds_only_its_buffer(
        lone_gateway, event_log):
    """A client that reads nothing while the job goes on: the feed stops writing to it once its
    connection's buffer is full, so the gateway does not hold the job's messages for it; when it
    reads again it gets every message, in order, up to the end."""
    system, _ = lone_gateway
    feeds = system.server.config.app.state.gateway.feeds
    personas = 300
    await _requested(event_log, "slow", personas=personas)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: its buffer fills soon
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", system.port))
    try:
        await loop.sock_sendall(sock, f"GET {_sse('slow')} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        first = await asyncio.wait_for(loop.sock_recv(sock, 4096), 20)  # the head, and maybe more
        assert first.startswith(b"HTTP/1.1 200")
        channel = feeds.channels["slow"]
        await eventually(_async(lambda: len(channel.tapped) == 1), what="the stream tapped")

        connection = next(iter(system.server.server_state.connections))
        # The kernel's buffers for it small too (else they take megabytes before the gateway's fills).
        connection.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        error = "LLM timeout " + "x" * 2000  # about 2 KB a message: 600 KB for the job
        await asyncio.gather(*(event_log.publish(_failed("slow", i, error)) for i in range(personas)))

        async def behind() -> bool:
            return not channel.tapped and connection.transport.get_write_buffer_size() > 0

        await eventually(behind, what="the stream back with its task, waiting for the client")
        # Its task waits for the client: the gateway's buffer for it stays within its high-water
        # mark (64 KiB) and one piece (64 KiB, and an event), not the job's 600 KB.
        assert connection.transport.get_write_buffer_size() < (64 + 64 + 4) * 1024
        await event_log.publish(_end("slow", personas))

        received = bytearray(first)
        while not received.endswith(b"0\r\n\r\n"):
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), 30)
            assert chunk, "the stream ended before its last chunk"
            received += chunk
    finally:
        sock.close()
    ids = [line[4:] for line in bytes(received).split(b"\n") if line.startswith(b"id: ")]
    seqs = [int(i.split(b"-")[0]) for i in ids]
    assert seqs == sorted(seqs) and len(set(ids)) == len(ids)
    assert bytes(received).count(b'"type":"persona_progress"') == personas
    assert bytes(received).count(b'"type":"results"') == 1


async def test_a_flush_that_fails_gives_its_clients_back_to_their_tasks(event_log):
    """A bug in writing a batch to the tapped clients loses them nothing: their own tasks get
    what came, and the feed goes on."""
    from structlog.testing import capture_logs

    async with _tapped_watcher(event_log, "j", personas=2) as w:

        def fails() -> None:
            raise RuntimeError("a bug")

        w.channel.flush = fails  # type: ignore[method-assign]
        with capture_logs() as logs:
            await event_log.publish(_failed("j", 0))
            batch = await asyncio.wait_for(w.from_task, 20)
        assert [stored.event.type for stored, _, _ in batch] == ["persona.failed"]
        assert not w.tap.bodies and w.feeds.alive
        assert any(e["event"] == "job_feed_flush_failed" for e in logs)
