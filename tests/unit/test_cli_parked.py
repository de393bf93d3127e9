"""`promptgen parked reapply` names the consumers that park when given one that does not exist."""

from __future__ import annotations

import asyncio

from services.cli.parked import consumers, reapply_parked
from services.runtime.settings import Settings


def test_an_unknown_consumer_is_refused_with_the_names_before_anything_connects(capsys):
    settings = Settings(nats_url="nats://127.0.0.1:1")  # nothing listens: a connection would fail
    assert asyncio.run(reapply_parked(settings, "projecter", None)) == 2
    said = capsys.readouterr().err
    assert "projecter" in said
    assert all(name in said for name in ("projector", "job-manager", "generator-workers"))
    assert len(consumers()) == 5
