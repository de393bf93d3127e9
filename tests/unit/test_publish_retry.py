"""A publish the server does not answer in time is sent again (same Nats-Msg-Id, so stored once),
whether it fails on its first try or on a later one."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from nats.errors import TimeoutError as NatsTimeout

from services.adapters.event_log import EventLog
from services.runtime.settings import Settings
from tests.samples import sample


class SlowToAnswer:
    """A JetStream context whose first ``failures`` publishes time out."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[tuple[str, str]] = []

    async def publish(self, subject: str, payload: bytes, *, stream: str, headers: dict) -> SimpleNamespace:
        self.sent.append((subject, headers["Nats-Msg-Id"]))
        if len(self.sent) <= self.failures:
            raise NatsTimeout
        return SimpleNamespace(seq=41 + len(self.sent))


def _log(js: SlowToAnswer) -> EventLog:
    nc = SimpleNamespace(jetstream=lambda timeout: js, max_payload=1 << 20)
    return EventLog(nc, Settings())  # type: ignore[arg-type]


@pytest.mark.parametrize("failures", [0, 1, 3])
async def test_a_publish_that_times_out_is_sent_again_with_the_same_msg_id(failures):
    js = SlowToAnswer(failures)
    event = sample("persona.completed")
    assert await _log(js).publish(event) == 41 + failures + 1
    assert js.sent == [(event.subject(), event.dedup_id())] * (failures + 1)
