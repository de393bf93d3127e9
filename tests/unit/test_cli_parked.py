"""`promptgen parked reapply` and `discard` name the consumers that park when given one that does not exist."""

from __future__ import annotations

import asyncio
from typing import get_args

from contracts.api import ParkingConsumer
from services.adapters.parked import PARKING_CONSUMERS
from services.cli.parked import reapply_parked
from services.generator.consumers import DISPATCHER, WORKERS
from services.generator.dead_letters import DEAD_LETTERS
from services.projector.fold import PROJECTOR
from services.projector.job_manager import JOB_MANAGER
from services.runtime.settings import Settings


def test_an_unknown_consumer_is_refused_with_the_names_before_anything_connects(capsys):
    settings = Settings(nats_url="nats://127.0.0.1:1")  # nothing listens: a connection would fail
    assert asyncio.run(reapply_parked(settings, "projecter", None)) == 2
    said = capsys.readouterr().err
    assert "projecter" in said
    assert all(name in said for name in ("projector", "job-manager", "generator-workers"))



def test_the_consumers_that_park_are_named_as_their_services_name_them_with_the_service_that_runs_each():
    assert PARKING_CONSUMERS == {PROJECTOR: "projector", JOB_MANAGER: "projector", DISPATCHER: "generator",
                                 WORKERS: "generator", DEAD_LETTERS: "generator"}
    assert get_args(ParkingConsumer) == tuple(PARKING_CONSUMERS)  # what POST /admin/parked/reapply takes


def test_discarding_for_an_unknown_consumer_is_refused_before_anything_connects(capsys):
    from services.cli.parked import discard_parked

    settings = Settings(nats_url="nats://127.0.0.1:1")
    assert asyncio.run(discard_parked(settings, "projecter", [1], None)) == 2
    assert "generator-dead-letters" in capsys.readouterr().err
