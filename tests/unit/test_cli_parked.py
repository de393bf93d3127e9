"""`promptgen parked reapply` knows every consumer that parks, and names them for a typo."""

from __future__ import annotations

import asyncio

from services.cli.parked import CONSUMERS, reapply_parked
from services.generator.consumers import DISPATCHER, WORKERS
from services.generator.dead_letters import DEAD_LETTERS
from services.projector.fold import PROJECTOR
from services.projector.job_manager import JOB_MANAGER
from services.runtime.settings import Settings


def test_the_cli_knows_every_consumer_that_parks():
    assert set(CONSUMERS) == {PROJECTOR, JOB_MANAGER, DISPATCHER, WORKERS, DEAD_LETTERS}


def test_an_unknown_consumer_is_refused_with_the_names_before_anything_connects(capsys):
    settings = Settings(nats_url="nats://127.0.0.1:1")  # nothing listens: a connection would fail
    assert asyncio.run(reapply_parked(settings, "projecter", None)) == 2
    said = capsys.readouterr().err
    assert "projecter" in said and all(name in said for name in CONSUMERS)
