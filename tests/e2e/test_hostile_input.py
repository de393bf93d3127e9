"""Hostile input: schemathesis drives the public API from its own OpenAPI document.

Every operation gets examples, boundary cases (the coverage phase) and fuzzed
requests, valid and invalid, over real HTTP; every response must pass all of
schemathesis' checks (no 5xx, only documented statuses, bodies and headers as
documented, invalid input refused, valid input accepted). Afterwards the system
must still work: a new template is readable at once, and the projector has
applied everything in the log.

The system runs in a thread of its own, with its own nats-server (even when
``NATS_URL`` is set: fuzzing must not write into a shared log), because the
schemathesis tests are synchronous and call it with blocking HTTP.
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import uuid
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import httpx
import pytest
import schemathesis
from hypothesis import given, settings
from hypothesis import strategies as st

from services.adapters.event_log import EventLog
from services.adapters.read_models import ReadModels, mongo_client
from services.gateway.app import create_app
from services.gateway.projection import ProjectionWaiter
from services.runtime.settings import Settings
from tests.conftest import SCENARIO, InProcessSystem
from tests.servers import NatsServer

# schemathesis makes one test per operation, all under one node id: pytest-xdist cannot tell
# them apart and runs one. `make test` runs these in its own process, after the others.
pytestmark = pytest.mark.serial

T = TypeVar("T")

# Seeded and bounded: the whole module runs in well under two minutes on two cores.
CONFIG = schemathesis.Config.from_dict({
    "seed": 20240517,
    "generation": {"max-examples": 25, "database": "none"},
    "request-timeout": 30,
    # A body over the limit is refused before it is read: 413 is a refusal like any other.
    "checks": {"negative_data_rejection": {"expected-statuses": [
        "400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]}},
    "operations": [{
        # Its documented answer for a consumer with no running process (any name that is not one
        # of ours): the only 5xx allowed, and only here.
        "include-name": "POST /admin/parked/reapply",
        "checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "503"]}},
    }],
})


@dataclass
class LiveSystem:
    system: InProcessSystem
    loop: asyncio.AbstractEventLoop

    @property
    def base_url(self) -> str:
        return self.system.base_url

    def run(self, coro: Awaitable[T], timeout: float = 60) -> T:
        """Run ``coro`` on the system's event loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@pytest.fixture(scope="module")
def live_system(tmp_path_factory, mongo_server_url) -> Iterator[LiveSystem]:
    nats = NatsServer(tmp_path_factory.mktemp("nats")).start()
    settings = Settings(nats_url=nats.url, mongo_url=mongo_server_url, mongo_db=f"test_{uuid.uuid4().hex[:12]}",
                        provider="offline", projection_wait_seconds=10, ack_wait_seconds=5, sse_ping_seconds=1,
                        generator_http_port=0, projector_http_port=0)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="system-under-fuzz", daemon=True)
    thread.start()
    live = LiveSystem(InProcessSystem(settings), loop)
    live.run(live.system.start())
    try:
        yield live
    finally:
        live.run(live.system.close())
        live.run(_drop_database(settings))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        nats.stop()


async def _drop_database(settings: Settings) -> None:
    client = mongo_client(settings)
    await client.drop_database(settings.mongo_db)
    await client.close()


# The gateway's document, built without starting anything (the lifespan connects, not the app);
# the live gateway must serve the same one (checked below).
OPENAPI = create_app(Settings()).openapi()
schema = schemathesis.openapi.from_dict(OPENAPI, config=CONFIG)


def test_the_live_gateway_serves_the_document_under_test(live_system):
    assert httpx.get(f"{live_system.base_url}/openapi.json").json() == OPENAPI


@schema.parametrize()
def test_every_operation_survives_hostile_input(case, live_system):
    case.call_and_validate(base_url=live_system.base_url)


# Free-form values built from what MongoDB and NATS find hard: operator and dotted keys, NUL,
# lone surrogates, long keys, wide integers, non-finite floats, deep nesting.
_text = st.text(st.sampled_from(["a", "$", ".", "\x00", "é", "😀", "\ud800", " "]), max_size=5)
_keys = _text | st.just("k" * 129)
_scalars = (st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | _text)
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3),
                       max_leaves=12)
_nested = st.builds(lambda value, depth: functools.reduce(lambda v, _: [v], range(depth), value),
                    _values, st.sampled_from([0, 0, 1, 2, 5]))


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(avatars=st.lists(_nested, max_size=3))
def test_a_free_form_value_is_refused_or_stored_as_given(live_system, avatars):
    body = json.dumps({"mode": "learn_mode", "avatars": avatars}).encode()  # "\ud800" goes escaped, NaN bare
    with httpx.Client(base_url=live_system.base_url, timeout=30) as http:
        r = http.post("/avatar-interactions", content=body, headers={"content-type": "application/json"})
        assert r.status_code in (201, 422), r.text
        if r.status_code == 422:
            assert r.json()["field"].startswith("avatars"), r.text
            return
        stored = http.get(f"/avatar-interactions/{r.json()['id']}")
        assert stored.status_code == 200 and stored.json()["avatars"] == json.loads(body)["avatars"]


def test_the_system_still_works_after_the_fuzzing(live_system):
    """Runs after the fuzzing above (pytest keeps the file's order): nothing it sent stopped anything."""
    with httpx.Client(base_url=live_system.base_url, timeout=30) as http:
        r = http.post("/scenario/analyze-scenario-enhanced", json={"scenario_document": SCENARIO})
        assert r.status_code == 201, r.text
        template_id = r.json()["template_id"]
        r = http.get(f"/scenario/templates/{template_id}")
        assert r.status_code == 200 and r.json()["template_id"] == template_id
    live_system.run(_projector_catches_up(live_system.system.settings))


async def _projector_catches_up(settings: Settings, timeout: float = 20) -> None:
    """The projector's checkpoint reaches the stream's last sequence: it applied every event."""
    event_log = await EventLog.connect(settings, "test-hostile")
    client = mongo_client(settings)
    try:
        models = ReadModels(client[settings.mongo_db])
        last = await event_log.last_seq()
        caught_up = await ProjectionWaiter(models, timeout).wait_for(last)
        assert caught_up, f"the projector is stuck at {await models.checkpoint()}; the log is at {last}"
    finally:
        await event_log.close()
        await client.close()
