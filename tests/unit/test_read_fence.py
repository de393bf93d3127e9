"""The read fence's bookkeeping (services/gateway/freshness.py), with a stand-in log and projector."""

from __future__ import annotations

import asyncio

import pytest

from contracts import subjects
from services.gateway.freshness import ReadFence

pytestmark = pytest.mark.unit


class Log:
    def __init__(self, last: int) -> None:
        self.last = last

    async def last_seq(self) -> int:
        return self.last


class Projector:
    """The waiter's face: a checkpoint, and waits that end when it passes."""

    def __init__(self) -> None:
        self.checkpoint = 0
        self.waited_for: list[int] = []
        self.given: list[float | None] = []  # the time each wait was given

    async def wait_for(self, seq: int, *, timeout: float | None = None) -> bool:
        self.waited_for.append(seq)
        self.given.append(timeout)
        return seq <= self.checkpoint


def _end(job_id: str) -> str:
    return subjects.job(job_id, "completed")


def _prompt(persona_id: str) -> str:
    return subjects.job_persona("j", persona_id, "completed")


async def test_a_read_waits_for_its_own_events_only():
    projector = Projector()
    fence = ReadFence(Log(5), projector, timeout=1)  # type: ignore[arg-type]
    for seq, subject in enumerate([subjects.job("a", "requested"), _prompt("p"), _end("a"),
                                   subjects.job_persona("a", "q", "progress"), _end("b")], start=1):
        fence.observe(subject, seq)
    assert await fence.personas(["p"]) is False and projector.waited_for == [2]
    assert await fence.jobs(["a"]) is False and projector.waited_for[-1] == 3
    assert await fence.jobs(["c"]) is True  # nothing of it in the log: no wait
    assert await fence.personas(["q"]) is True  # progress is not a prompt
    projector.checkpoint = 3
    assert await fence.jobs(["a"]) is True
    assert await fence.jobs(["b"]) is False and projector.waited_for[-1] == 5
    projector.checkpoint = 5
    assert await fence.jobs(["b"]) is True
    fence.observe(_end("z"), 6)  # the applied ones are forgotten as it goes
    assert fence.remembered == 1


async def test_a_read_first_waits_for_the_feed_to_see_as_far_as_the_log():
    """An end another gateway process delivered may not have reached this one's feed yet."""
    projector = Projector()
    fence = ReadFence(Log(2), projector, timeout=5)  # type: ignore[arg-type]
    fence.observe(subjects.job("a", "requested"), 1)
    read = asyncio.ensure_future(fence.jobs(["a"]))
    done, _ = await asyncio.wait([read], timeout=0.05)
    assert not done  # the log ends at 2, the feed has seen 1
    fence.observe(_end("a"), 2)
    assert await read is False and projector.waited_for == [2]


async def test_the_projector_is_given_what_the_feeds_wait_left_of_the_reads_timeout():
    """One bound for a read, not one for each wait: a feed that took most of it leaves the rest."""
    projector = Projector()
    fence = ReadFence(Log(2), projector, timeout=5)  # type: ignore[arg-type]
    fence.observe(subjects.job("a", "requested"), 1)
    read = asyncio.ensure_future(fence.jobs(["a"]))
    done, _ = await asyncio.wait([read], timeout=0.2)  # the feed is behind the log for 0.2 s at least
    assert not done
    fence.observe(_end("a"), 2)
    assert await read is False
    (given,) = projector.given
    assert given is not None and given <= 4.81


async def test_a_feed_that_does_not_catch_up_in_time_is_reported():
    fence = ReadFence(Log(9), Projector(), timeout=0.05)  # type: ignore[arg-type]
    assert await fence.jobs(["a"]) is False


async def test_past_its_limit_the_oldest_are_waited_for_together():
    projector = Projector()
    fence = ReadFence(Log(3), projector, timeout=1, limit=2)  # type: ignore[arg-type]
    for seq, job in enumerate("abc", start=1):
        fence.observe(_end(job), seq)
    assert fence.remembered == 2
    await fence.jobs(["unknown"])  # the forgotten end of "a" may be this one's
    assert projector.waited_for == [1]
    projector.checkpoint = 1
    assert await fence.jobs(["unknown"]) is True


async def test_what_came_before_the_feed_started_is_waited_for_as_a_whole():
    projector = Projector()
    fence = ReadFence(Log(7), projector, timeout=1)  # type: ignore[arg-type]
    fence.starts_at(7)
    assert fence.seen == 7
    assert await fence.personas(["any"]) is False and projector.waited_for == [7]
    projector.checkpoint = 7
    assert await fence.personas(["any"]) is True


async def test_a_feed_that_restarts_from_an_earlier_position_changes_nothing():
    projector = Projector()
    fence = ReadFence(Log(3), projector, timeout=1)  # type: ignore[arg-type]
    fence.observe(_prompt("p"), 1)
    fence.observe(_prompt("p"), 3)  # a retry's prompt
    fence.observe(_prompt("p"), 1)  # seen again by a restarted feed
    await fence.personas(["p"])
    assert projector.waited_for == [3]


async def test_with_the_log_unreachable_what_the_feed_saw_is_still_waited_for():
    from nats.errors import NoServersError
    from nats.errors import TimeoutError as NatsTimeoutError

    class Away(Log):
        async def last_seq(self) -> int:
            raise NoServersError

    projector = Projector()
    fence = ReadFence(Away(0), projector, timeout=1)  # type: ignore[arg-type]
    fence.observe(_end("a"), 4)
    assert await fence.jobs(["a"]) is False and projector.waited_for == [4]

    class Slow(Log):  # nats-py's request timeout: a TimeoutError as well as a NATS error
        async def last_seq(self) -> int:
            raise NatsTimeoutError

    slow = ReadFence(Slow(0), projector, timeout=1)  # type: ignore[arg-type]
    slow.observe(_end("b"), 5)
    assert await slow.jobs(["b"]) is False and projector.waited_for[-1] == 5  # not taken for a lagging feed


async def test_every_job_waits_for_the_newest_end():
    projector = Projector()
    fence = ReadFence(Log(3), projector, timeout=1)  # type: ignore[arg-type]
    for seq, subject in enumerate([_end("a"), _prompt("p"), _end("b")], start=1):
        fence.observe(subject, seq)
    assert await fence.every_job() is False and projector.waited_for == [3]


async def test_reads_at_once_share_one_question_to_the_log_and_a_later_one_asks_again():
    class Counting(Log):
        calls = 0

        async def last_seq(self) -> int:
            self.calls += 1
            return self.last

    log_ = Counting(0)
    fence = ReadFence(log_, Projector(), timeout=1)  # type: ignore[arg-type]
    assert all(await asyncio.gather(*(fence.jobs([str(i)]) for i in range(100))))
    assert log_.calls == 1
    assert await fence.personas(["p"]) is True
    assert log_.calls == 2  # the first was sent before this read began: it may predate an end


async def test_each_fenced_read_is_counted_by_outcome_with_its_wait_and_what_is_remembered():
    from nats.errors import NoServersError

    from services.runtime.metrics import Metrics

    metrics = Metrics()

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    projector = Projector()
    fence = ReadFence(Log(3), projector, timeout=0.05, metrics=metrics)  # type: ignore[arg-type]
    for seq, subject in enumerate([_end("a"), _prompt("p"), _end("b")], start=1):
        fence.observe(subject, seq)
    assert sample("promptgen_read_fence_remembered") == 3
    assert await fence.jobs(["a"]) is False  # the projector is behind
    projector.checkpoint = 3
    assert await fence.personas(["p"]) is True
    assert await fence.jobs(["nothing-of-it"]) is True
    assert await fence.jobs([]) is True  # nothing to read: not a fenced read
    assert sample("promptgen_read_fence_remembered") == 0  # found applied, forgotten
    lagging = ReadFence(Log(9), Projector(), timeout=0.05, metrics=metrics)  # type: ignore[arg-type]
    assert await lagging.jobs(["a"]) is False  # its feed never sees as far as the log

    class Away(Log):
        async def last_seq(self) -> int:
            raise NoServersError

    away = ReadFence(Away(0), Projector(), timeout=0.05, metrics=metrics)  # type: ignore[arg-type]
    assert await away.jobs(["a"]) is True  # nothing seen of it: fresh, though the log did not answer
    assert sample("promptgen_read_fence_reads_total", outcome="fresh") == 3
    assert sample("promptgen_read_fence_reads_total", outcome="projection_lagging") == 1
    assert sample("promptgen_read_fence_reads_total", outcome="feed_lagging") == 1
    assert sample("promptgen_read_fence_log_errors_total") == 1
    assert sample("promptgen_read_fence_wait_seconds_count") == 5


async def test_with_no_time_to_wait_nothing_is_asked_or_waited_for_and_nothing_warned():
    """PROMPTGEN_PROJECTION_WAIT_SECONDS=0: read-your-writes is off. What the feed has seen and
    the projector's checkpoint decide at once, and no read logs a lagging feed."""
    from structlog.testing import capture_logs

    class Unasked(Log):
        async def last_seq(self) -> int:
            raise AssertionError("the log was asked where it ends")

    projector = Projector()
    fence = ReadFence(Unasked(0), projector, timeout=0)  # type: ignore[arg-type]
    fence.observe(_end("a"), 1)
    with capture_logs() as logs:
        assert await fence.jobs(["a"]) is False  # not applied: the caller answers from the log
        assert await fence.jobs(["b"]) is True
        projector.checkpoint = 1
        assert await fence.jobs(["a"]) is True
    assert projector.given == [0.0] * 3
    assert logs == []


async def test_a_question_every_reader_gave_up_on_leaves_no_unretrieved_error():
    """NATS answers where the log ends after the read's deadline, with an error: nobody is
    waiting for it any more, and asyncio must not report it as never retrieved."""
    import gc

    class SlowFailingLog:
        async def last_seq(self) -> int:
            await asyncio.sleep(0.2)
            raise TimeoutError("nats: timeout")

    gc.collect()  # what earlier tests in this process left is reported before, not below
    unretrieved: list[dict] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: unretrieved.append(context))
    try:
        fence = ReadFence(SlowFailingLog(), Projector(), timeout=0.05)  # type: ignore[arg-type]
        fence.observe(_prompt("p"), 1)
        assert await fence.personas(["p"]) is False  # its deadline passed first
        asking = fence._asking
        assert asking is not None
        await asyncio.wait([asking])
        fence._asking = asking = None
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    ours = [c for c in unretrieved if isinstance(c.get("exception"), TimeoutError)
            and "nats: timeout" in str(c["exception"])]
    assert ours == [], unretrieved
