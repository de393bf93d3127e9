"""The command-line tools (replay, rebuild, parked, keys) open the event log without changing it:
an operator's shell lacks the deployment's variables, and a tool must not shorten the log's
retention with its own default, make a log on another NATS, or wait for NATS forever."""

from __future__ import annotations

import asyncio

import pytest
from nats.js.errors import NotFoundError
from structlog.testing import capture_logs

from services.adapters import event_log as event_log_module
from services.adapters.event_log import EventLog, NatsUnreachable, NoEventLog
from services.cli.embedded import free_port
from services.cli.main import run_tool
from services.cli.replay import show_job_history
from services.runtime.settings import Settings
from tests.samples import job_requested
from tests.servers import NatsServer
from tests.waiting import eventually


@pytest.fixture
def nats(tmp_path):
    server = NatsServer(tmp_path / "nats").start()  # its own: the test makes and looks for streams
    yield server
    server.stop()


async def test_replay_reads_the_log_and_leaves_its_retention_as_the_deployment_set_it(nats):
    deployment = Settings(nats_url=nats.url, provider="offline", stream_max_age_days=365,
                          duplicate_window_seconds=600)
    log = await EventLog.connect(deployment, "deployment")  # the services make the stream
    try:
        await log.publish(job_requested("j-kept"))
        shell = Settings(nats_url=nats.url, provider="offline", stream_max_age_days=1)  # not the deployment's
        assert await show_job_history(shell, "j-kept", as_json=True) == 0
        config = (await log.js.stream_info(log.stream)).config
        assert (config.max_age, config.duplicate_window) == (365 * 86400, 600)
    finally:
        await log.close()


async def test_a_tool_pointed_at_another_nats_makes_no_log_there(nats):
    elsewhere = Settings(nats_url=nats.url, provider="offline")  # a NATS where no service ever ran
    with pytest.raises(NoEventLog, match=f"NATS at {nats.url} has no stream PROMPTGEN"):
        await EventLog.for_tool(elsewhere, "replay")
    look = await EventLog.for_tool(elsewhere, "keys", needs_stream=False)  # keys needs none
    try:
        with pytest.raises(NotFoundError):
            await look.js.stream_info("PROMPTGEN")
    finally:
        await look.close()


def test_the_command_says_why_in_one_line_and_exits_1(nats, capsys, monkeypatch):
    elsewhere = Settings(nats_url=nats.url, provider="offline")
    assert run_tool(show_job_history(elsewhere, "j1", as_json=False)) == 1
    assert "has no stream PROMPTGEN: is NATS_URL the deployment's NATS" in " ".join(capsys.readouterr().err.split())
    monkeypatch.setattr(event_log_module, "TOOL_WAIT_SECONDS", 1.0)
    nobody = Settings(nats_url=f"nats://127.0.0.1:{free_port()}", provider="offline")
    assert run_tool(show_job_history(nobody, "j1", as_json=False)) == 1  # not waiting forever
    err = " ".join(capsys.readouterr().err.split())
    assert "NATS did not answer at nats://127.0.0.1:" in err and "within 1 s (last: " in err and "set NATS_URL" in err
    assert "Traceback" not in err


async def test_a_tool_gives_up_on_a_nats_that_does_not_answer_saying_nothing_before(monkeypatch):
    """Its one line says it all: not one more per attempt (nats-py tries every 250 ms)."""
    monkeypatch.setattr(event_log_module, "TOOL_WAIT_SECONDS", 1.0)
    nobody = Settings(nats_url=f"nats://127.0.0.1:{free_port()}", provider="offline")
    with capture_logs() as logs, pytest.raises(NatsUnreachable, match=r"within 1 s \(last: .*Connect call failed"):
        await EventLog.for_tool(nobody, "replay")  # the last error is in the line: why it did not answer
    assert [entry for entry in logs if entry["log_level"] in ("warning", "error")] == []


async def test_a_nats_server_too_old_for_the_outcomes_condition_is_logged_at_error(nats, monkeypatch):
    monkeypatch.setattr(event_log_module, "MIN_NATS_VERSION", (99, 0))  # this server, taken for too old
    with capture_logs() as logs:
        nc = await event_log_module.connect_nats(nats.url, "generator")
    await nc.close()
    said = [entry for entry in logs if entry["event"] == "nats_server_too_old"]
    assert len(said) == 1 and said[0]["log_level"] == "error" and said[0]["needs"] == "99.0", said


async def test_a_service_waiting_for_nats_says_so_once_in_a_while_not_at_every_attempt():
    nobody = f"nats://127.0.0.1:{free_port()}"
    with capture_logs() as logs:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(2):  # about eight attempts
                await event_log_module.connect_nats(nobody, "projector")
    said = [entry for entry in logs if entry["event"] == "nats_error"]
    assert len(said) == 1 and said[0]["servers"] == [nobody], said


async def test_reconnected_says_how_many_errors_the_last_nats_error_left_out(nats, monkeypatch):
    """An outage logs its first error, then at most one every 30 s: the line that says NATS is
    back counts those left out, so an operator can tell a blip from minutes of failures."""
    attempts = []
    due = event_log_module._Sparse.due

    def counted(self):
        attempts.append(1)
        return due(self)

    monkeypatch.setattr(event_log_module._Sparse, "due", counted)
    with capture_logs() as logs:
        nc = await event_log_module.connect_nats(nats.url, "projector")
        try:
            nats.stop()
            await eventually(lambda: _at_least(attempts, 3), what="three failed reconnects")
            nats.start()
            back = await eventually(lambda: _said(logs, "nats_reconnected"), what="the reconnect")
        finally:
            await nc.close()
    errors = [entry for entry in logs if entry["event"] == "nats_error"]
    assert len(errors) == 1, errors
    assert back[0]["repeated"] == len(attempts) - 1 >= 2, back


async def _at_least(items: list, n: int) -> bool:
    return len(items) >= n


async def _said(logs: list[dict], event: str) -> list[dict]:
    return [entry for entry in logs if entry["event"] == event]


async def test_a_connection_closed_while_nats_is_lost_closes_without_an_error(nats):
    """A service told to stop while NATS is down: what nats-py still holds cannot be written,
    which is said in one line, not raised (a service printed a 200-line traceback as it stopped)."""
    nc = await event_log_module.connect_nats(nats.url, "generator")
    nats.stop()
    await eventually(lambda: _true(nc.is_reconnecting), what="the connection lost")
    for _ in range(3):
        await nc.publish("promptgen.held", b"held while NATS is away")
    with capture_logs() as logs:
        await nc.close()
    assert nc.is_closed
    said = [entry for entry in logs if entry["event"] == "nats_closed"]
    assert len(said) == 1 and said[0].get("unsent") is True, logs


async def _true(value: bool) -> bool:
    return value
