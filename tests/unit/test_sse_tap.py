"""What the feed writes to a caught-up SSE stream is written once: a failure after the write
(counting it, tracing it) is logged, and the write still counts as done, so the stream's own
task does not send the same messages again."""

from __future__ import annotations

from structlog.testing import capture_logs

from services.gateway.sse import StreamTap
from services.runtime import tracing


class _Body:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, body: bytes) -> bool:
        self.written.append(body)
        return True


class _Counter:
    def inc(self, n: int) -> None:
        raise RuntimeError("a broken counter")


class _Metrics:
    sse_messages = _Counter()


def test_a_failure_after_the_write_still_counts_it_as_written():
    body = _Body()
    tap = StreamTap(body, after=None, metrics=_Metrics(), request=tracing.current_span())  # type: ignore[arg-type]
    with capture_logs() as logs:
        assert tap.send(b"id: 1\ndata: {}\n\n", [], 1) is True
    assert body.written == [b"id: 1\ndata: {}\n\n"]
    assert any(e["event"] == "sse_delivery_not_recorded" for e in logs)
