"""An event larger than the NATS server takes is refused before it is sent: a 413 naming
what was too large, nothing published, and the connection (and the system) still working.

The embedded server takes 8 MB per message, more than any request under the body limit
can become; here the server takes 64 KiB, so a request well under the body limit makes
an event over it (the same path a job of many large personas takes with the 8 MB limit).
"""

from __future__ import annotations

import pytest

from contracts.domain import TemplateData
from contracts.events import TemplateCreated, encode_event
from services.adapters.event_log import EventTooLarge
from tests.servers import NatsServer

MAX_PAYLOAD = 64 * 1024


@pytest.fixture
def nats_server(tmp_path):
    """Overrides conftest's: a server of our own (even with NATS_URL set), taking 64 KiB per message."""
    server = NatsServer(tmp_path / "nats", max_payload="64KB").start()
    yield server
    server.stop()


def _template(document: str) -> TemplateCreated:
    return TemplateCreated(template_id="t1", scenario_document=document,
                           template_data=TemplateData(title="T", description="D"))


async def test_the_event_log_refuses_an_event_over_the_servers_limit_headers_included(event_log):
    assert event_log.nc.max_payload == MAX_PAYLOAD
    # A payload that fits on its own, but not with its Nats-Msg-Id header: the server would close
    # the connection over it.
    overhead = len(encode_event(_template("")))
    event = _template("x" * (MAX_PAYLOAD - overhead - 10))
    assert len(encode_event(event)) < MAX_PAYLOAD
    with pytest.raises(EventTooLarge) as refused:
        await event_log.publish(event)
    assert refused.value.event_type == "template.created" and refused.value.limit == MAX_PAYLOAD
    assert refused.value.size > MAX_PAYLOAD
    assert await event_log.last_seq() == 0
    assert await event_log.publish(_template("small")) == 1  # the connection is fine


async def test_a_request_whose_event_is_too_large_is_413_naming_it(client, event_log, scenario_document):
    document = scenario_document + "\n" + "More context. " * 6000  # 84 KB: under the body limit
    r = await client.post("/scenario/analyze-scenario-enhanced", json={"scenario_document": document})
    assert r.status_code == 413, r.text
    body = r.json()
    assert body["code"] == "event_too_large" and body["field"] == "scenario_document"
    assert "template" in body["detail"] and str(MAX_PAYLOAD) in body["detail"]

    avatars = [{"portrait": "p" * 9000} for _ in range(10)]  # 90 KB of free-form value, under its cap
    r = await client.post("/avatar-interactions", json={"mode": "learn_mode", "avatars": avatars})
    assert r.status_code == 413 and r.json()["code"] == "event_too_large", r.text
    assert await event_log.last_seq() == 0

    # Nothing broke: the same gateway, on the same connection, goes on.
    r = await client.post("/scenario/analyze-scenario-enhanced", json={"scenario_document": scenario_document})
    assert r.status_code == 201, r.text
    assert (await client.get(f"/scenario/templates/{r.json()['template_id']}")).status_code == 200
