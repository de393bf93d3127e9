"""The connection to a real nats-server: what its logs say when it ends."""

from __future__ import annotations

from structlog.testing import capture_logs

from services.adapters.event_log import EventLog
from tests.waiting import eventually


async def test_closing_the_connection_is_logged_as_a_close_not_as_a_lost_connection(settings):
    """Every service and CLI command closes its connection on the way out: that is no warning."""
    with capture_logs() as logs:
        event_log = await EventLog.connect(settings, "test-close")
        await event_log.close()
    said = [(line["event"], line["log_level"]) for line in logs]
    assert ("nats_closed", "info") in said and not [e for e, _ in said if e == "nats_disconnected"], said


async def test_a_connection_the_server_ends_for_good_is_an_error(settings):
    """nats-py closes for good, without reconnecting, on a server error such as a revoked user's
    authorization violation: the service has lost NATS, and says so."""
    event_log = await EventLog.connect(settings, "test-ended")
    try:
        with capture_logs() as logs:
            await event_log.nc._process_err("'Authorization Violation'")  # what the server sends then

            async def ended() -> bool:  # nats-py closes in a task of its own
                return any(line["event"] in ("nats_connection_closed", "nats_closed") for line in logs)

            await eventually(ended, what="the connection's end, logged")
        said = [(line["event"], line["log_level"]) for line in logs]
        assert ("nats_connection_closed", "error") in said and ("nats_closed", "info") not in said, said
    finally:
        await event_log.close()
