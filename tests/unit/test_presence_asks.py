"""A starting projector asks who runs: one "no responders" from the server is not taken for
nobody (a pure unit: the log answers as scripted)."""

from __future__ import annotations

import json

import pytest
from nats.errors import NoRespondersError

from services.projector import presence
from services.projector.presence import AnotherProjector, Identity, claim


class ScriptedLog:
    def __init__(self, answers: list) -> None:
        self.answers, self.asked, self.subscribed = list(answers), 0, False

    async def request(self, subject: str, data: bytes, *, timeout: float):
        self.asked += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def subscribe(self, subject, callback):
        self.subscribed = True

        class Subscription:
            async def unsubscribe(self) -> None: ...
        return Subscription()


class Answer:
    def __init__(self, data: bytes) -> None:
        self.data = data


@pytest.fixture(autouse=True)
def no_gap(monkeypatch):
    monkeypatch.setattr(presence, "NO_RESPONDERS_GAP", 0, raising=False)


async def test_one_no_responders_then_an_answer_is_another_projector():
    other = Answer(json.dumps({"role": "projector", "host": "h", "pid": 7, "since": "x"}).encode())
    log = ScriptedLog([NoRespondersError(), other])
    with pytest.raises(AnotherProjector):
        await claim(log, Identity())  # type: ignore[arg-type]
    assert log.asked == 2 and not log.subscribed


async def test_no_responders_said_each_time_is_nobody():
    log = ScriptedLog([NoRespondersError()] * presence.NO_RESPONDERS_ASKS)
    await claim(log, Identity())  # type: ignore[arg-type]
    assert log.asked == presence.NO_RESPONDERS_ASKS and log.subscribed
