"""NATS requests met by a passing condition are asked again: a publish the server does not answer
in time (same Nats-Msg-Id, so stored once), a stream or bucket it cannot place yet."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import BadRequestError, NoStreamResponseError, NotFoundError, ServerError

from services.adapters import event_log as event_log_module
from services.adapters.event_log import EventLog, StreamSilent
from services.runtime.settings import Settings
from tests.samples import sample


class SlowToAnswer:
    """A JetStream context whose first ``failures`` publishes fail with ``error``."""

    def __init__(self, failures: int, error: type[Exception] = NatsTimeout) -> None:
        self.failures = failures
        self.error = error
        self.sent: list[tuple[str, str]] = []

    async def publish(self, subject: str, payload: bytes, *, stream: str, headers: dict) -> SimpleNamespace:
        self.sent.append((subject, headers["Nats-Msg-Id"]))
        if len(self.sent) <= self.failures:
            raise self.error
        return SimpleNamespace(seq=41 + len(self.sent))


def _log(js: SlowToAnswer | NoPeersAtFirst) -> EventLog:
    nc = SimpleNamespace(jetstream=lambda timeout: js, max_payload=1 << 20)
    return EventLog(nc, Settings())  # type: ignore[arg-type]


@pytest.mark.parametrize("failures", [0, 1, 3])
async def test_a_publish_that_times_out_is_sent_again_with_the_same_msg_id(failures):
    js = SlowToAnswer(failures)
    event = sample("persona.completed")
    assert await _log(js).publish(event) == 41 + failures + 1
    assert js.sent == [(event.subject(), event.dedup_id())] * (failures + 1)


async def test_a_publish_while_the_stream_has_no_leader_yet_is_sent_again():
    """A stream just made on a cluster, or electing a leader: nobody answers its subjects for a
    moment (nats-py: NoStreamResponseError). The publish failed at once."""
    js = SlowToAnswer(2, NoStreamResponseError)
    event = sample("persona.progress")
    assert await _log(js).publish(event) == 41 + 3
    assert js.sent == [(event.subject(), event.dedup_id())] * 3


async def test_a_stream_that_stays_silent_is_given_up_on_long_before_the_publish_retry_ends(monkeypatch):
    """A stream deleted, or no JetStream, looks like one without a leader: asked again for a
    short while only, then StreamSilent (a 503 at the gateway), not the publish's 60 s."""
    monkeypatch.setattr(event_log_module, "NO_STREAM_RESPONSE_SECONDS", 0.2)
    js = SlowToAnswer(10_000, NoStreamResponseError)
    started = time.monotonic()
    with pytest.raises(StreamSilent):
        await _log(js).publish(sample("persona.progress"))
    assert time.monotonic() - started < 5 and len(js.sent) >= 2


class NoPeersAtFirst:
    """A JetStream context of a cluster that cannot place a stream or bucket for its first
    ``refusals`` tries (a server offline, or not yet heard from just after the cluster started;
    ``refusal``: or another refusal of the kind)."""

    def __init__(self, refusals: int, refusal: Exception | None = None) -> None:
        self.refusals = refusals
        self.refusal = refusal or BadRequestError(code=400, err_code=10005,
                                                  description="no suitable peers for placement, peer offline")
        self.tries = 0

    def _place(self) -> None:
        self.tries += 1
        if self.tries <= self.refusals:
            raise self.refusal

    async def stream_info(self, name: str):
        raise NotFoundError(code=404, err_code=10059, description="stream not found")

    async def add_stream(self, config) -> None:
        self._place()

    async def create_key_value(self, config) -> str:
        self._place()
        return config.bucket


async def test_a_stream_nats_has_no_peers_for_yet_is_asked_for_again():
    js = NoPeersAtFirst(2)
    await _log(js).ensure_stream()
    assert js.tries == 3


async def test_a_bucket_nats_has_no_peers_for_yet_is_asked_for_again():
    js = NoPeersAtFirst(2)
    assert await _log(js).key_value("promptgen_api_keys") == "promptgen_api_keys"
    assert js.tries == 3


async def test_a_stream_whose_store_nats_could_not_make_yet_is_asked_for_again():
    """Met re-creating a stream just deleted: the old store not gone yet."""
    js = NoPeersAtFirst(2, ServerError(code=500, err_code=10049, description="error creating store for stream"))
    await _log(js).ensure_stream()
    assert js.tries == 3
