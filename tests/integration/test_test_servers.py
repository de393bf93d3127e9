"""The test servers themselves: one that died says so, with its log; a shared one is emptied only when
the tests are told it is theirs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from contracts import subjects
from tests.conftest import ERASE_NATS
from tests.servers import MongoServer


def test_a_mongo_server_that_exited_says_so_with_the_end_of_its_log(tmp_path):
    server = MongoServer(log=tmp_path / "mongo.log").start()
    try:
        server.check()  # running: nothing to say
        server.proc.kill()
        server.proc.wait()
        with pytest.raises(RuntimeError, match=f"port {server.port} exited with -9; its log ends"):
            server.check()
    finally:
        server.stop()


# A test whose `settings` empty the stream of a shared server (NATS_URL) before it runs.
SHARED_SERVER_TEST = ("tests/integration/test_nats_connection.py::"
                      "test_closing_the_connection_is_logged_as_a_close_not_as_a_lost_connection")


def _pytest(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           SHARED_SERVER_TEST], env=env, capture_output=True, text=True, timeout=90,
                          cwd=Path(__file__).resolve().parents[2])


async def test_the_tests_empty_a_shared_nats_only_when_told_it_is_theirs_to_empty(settings, event_log):
    """A shell that has NATS_URL of a running deployment (for the tools) must not lose that
    deployment's event log to `make test`: the tests refuse to start, saying how to go on."""
    await event_log.js.publish(subjects.job("j1", "requested"), b"an event of the deployment's")
    kept = (await event_log.js.stream_info(settings.stream)).state.messages
    assert kept == 1
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_XDIST_WORKER", "PYTEST_CURRENT_TEST", ERASE_NATS)}
    env |= {"NATS_URL": settings.nats_url, "MONGO_URL": settings.mongo_url}

    refused = _pytest(env)
    assert refused.returncode == pytest.ExitCode.USAGE_ERROR, refused.stdout + refused.stderr
    said = " ".join(refused.stderr.split())
    assert f"the tests would delete the stream {settings.stream} there" in said and f"{ERASE_NATS}=1" in said, said
    assert (await event_log.js.stream_info(settings.stream)).state.messages == kept

    told = _pytest(env | {ERASE_NATS: "1"})
    assert told.returncode == 0, told.stdout + told.stderr
    assert (await event_log.js.stream_info(settings.stream)).state.messages == 0  # deleted, then made anew
