"""The connection to a real nats-server: what its logs say when it ends."""

from __future__ import annotations

from structlog.testing import capture_logs

from services.adapters.event_log import EventLog


async def test_closing_the_connection_is_logged_as_a_close_not_as_a_lost_connection(settings):
    """Every service and CLI command closes its connection on the way out: that is no warning."""
    with capture_logs() as logs:
        event_log = await EventLog.connect(settings, "test-close")
        await event_log.close()
    said = [(line["event"], line["log_level"]) for line in logs]
    assert ("nats_closed", "info") in said and not [e for e, _ in said if e == "nats_disconnected"], said
