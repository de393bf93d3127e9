"""`promptgen probe`, the health check of the services that serve no HTTP."""

from __future__ import annotations

import os
import subprocess
import sys

from services.cli.embedded import free_port
from services.cli.probe import problems


async def test_probe_finds_nothing_wrong_when_nats_and_mongodb_answer(settings):
    assert await problems(settings, nats=True, mongo=True, timeout=5) == []


async def test_probe_names_what_does_not_answer(settings):
    dead = settings.model_copy(update={"nats_url": f"nats://127.0.0.1:{free_port()}",
                                       "mongo_url": f"mongodb://127.0.0.1:{free_port()}/?directConnection=true"})
    found = await problems(dead, nats=True, mongo=True, timeout=1)
    assert len(found) == 2
    assert found[0].startswith("NATS unreachable at nats://127.0.0.1:")
    assert found[1].startswith("MongoDB unreachable")
    assert await problems(dead, nats=False, mongo=False, timeout=1) == []


def test_probe_command_exits_non_zero_with_the_reason(settings):
    env = os.environ | {"NATS_URL": settings.nats_url, "MONGO_URL": f"mongodb://127.0.0.1:{free_port()}/"}
    ok = subprocess.run([sys.executable, "-m", "services.cli", "probe", "--no-mongo"], env=env,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([sys.executable, "-m", "services.cli", "probe", "--timeout", "1"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert "MongoDB unreachable" in bad.stderr
