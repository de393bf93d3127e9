"""One projector per deployment: a second one on the same NATS refuses to start, naming the one
that runs, and the first goes on (a real nats-server and MongoDB-wire server)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys

import pytest
from nats.errors import NoRespondersError
from structlog.testing import capture_logs

from contracts import subjects
from services.cli.embedded import free_port
from services.projector.bootstrap import bootstrap
from services.projector.presence import AnotherProjector
from tests.samples import persona
from tests.waiting import eventually


async def _answering(event_log) -> dict:
    """Who answers on the presence subject, once someone does."""

    async def asked() -> dict | None:
        try:
            return json.loads((await event_log.request(subjects.PROJECTOR_PRESENCE, b"", timeout=2)).data)
        except NoRespondersError:
            return None

    return await eventually(asked, what="a projector answering who it is")


async def _running(settings):
    service = await bootstrap(settings)
    stop = asyncio.Event()
    return service, stop, asyncio.create_task(service.run(stop))


async def test_a_second_projector_on_the_same_nats_refuses_to_start_and_the_first_goes_on(settings, event_log,
                                                                                           models):
    from contracts.events import PersonaCreated

    first, stop, task = await _running(settings)
    try:
        me = await _answering(event_log)
        assert me["pid"] == os.getpid() and me["host"] == socket.gethostname()

        # another retention than the running deployment's: refused before it changes the stream
        retention = (await event_log.js.stream_info(settings.stream)).config.max_age
        other = settings.model_copy(update={"stream_max_age_days": settings.stream_max_age_days / 2})
        with pytest.raises(AnotherProjector) as refused:
            await asyncio.wait_for(bootstrap(other), 30)
        assert (await event_log.js.stream_info(settings.stream)).config.max_age == retention
        said = str(refused.value)
        assert f"pid {os.getpid()}" in said and f"host {socket.gethostname()}" in said and me["since"] in said

        # the first still answers, and still folds the log
        assert await _answering(event_log) == me
        await event_log.publish(PersonaCreated(persona=persona("after-the-refusal")))
        await eventually(lambda: models.personas.find_one({"_id": "after-the-refusal"}),
                         what="the first projector folding on")
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await first.aclose()

    # once it has stopped, nobody answers, and a projector starts at once
    with pytest.raises(NoRespondersError):
        await event_log.request(subjects.PROJECTOR_PRESENCE, b"", timeout=2)
    third, stop, task = await _running(settings)
    try:
        assert (await _answering(event_log))["pid"] == os.getpid()
        assert not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await third.aclose()


async def test_a_projector_says_who_it_is_only_to_an_inbox(settings, event_log, models):
    """A reply subject such as `promptgen.>` would store the answer in the log as an event."""
    service, stop, task = await _running(settings)
    try:
        await _answering(event_log)
        heard: list = []

        async def hear(msg) -> None:
            heard.append(msg)

        sub = await event_log.nc.subscribe("not_an_inbox.presence", cb=hear)
        await event_log.nc.publish(subjects.PROJECTOR_PRESENCE, b"", reply="not_an_inbox.presence")
        # The projector reads both in the order sent, and answers on one connection: an answer to
        # the first would have come before the answer to the second.
        await _answering(event_log)
        await event_log.nc.flush()
        assert heard == []
        await sub.unsubscribe()
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await service.aclose()


async def test_promptgen_up_beside_a_running_projector_exits_2_naming_it(settings, event_log, models, tmp_path):
    """`up` with NATS_URL and MONGO_URL of a running deployment started a second projector: two
    writers of the read models, a job's end counted twice in the metrics."""
    service, stop, task = await _running(settings)
    try:
        await _answering(event_log)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PROMPTGEN_", "NATS_", "MONGO_"))} | {
            "NATS_URL": settings.nats_url, "MONGO_URL": settings.mongo_url, "PROMPTGEN_MONGO_DB": settings.mongo_db,
            "PROMPTGEN_PROVIDER": "offline", "PROMPTGEN_PROJECTOR_HTTP_PORT": "0",
            "PROMPTGEN_GENERATOR_HTTP_PORT": "0"}
        up = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "services.cli", "up", "--port", str(free_port()),
                             "--data-dir", str(tmp_path / "data")],
            env=env, capture_output=True, text=True, timeout=120)
        said = " ".join((up.stdout + up.stderr).split())
        assert up.returncode == 2, said[-3000:]
        assert "another projector already runs on this NATS" in said and f"pid {os.getpid()}" in said
        assert not task.done()  # the running one is left alone
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await service.aclose()


async def test_promptgen_rebuild_alone_and_a_projector_keep_out_of_each_others_way(settings, event_log, models):
    """With no projector to ask, `promptgen rebuild` writes the read models itself: not while a
    projector runs (one that started since the rebuild asked), and a projector starting meanwhile
    waits for it."""
    from services.cli.rebuild import run_rebuild
    from services.projector.presence import Identity, claim

    # a projector on another host answers who it is, and serves no rebuild requests (yet)
    stop_answering = await claim(event_log, Identity(host="elsewhere", pid=4242, since="2026-01-01T00:00:00+00:00"))
    try:
        assert await run_rebuild(settings) == 1
        assert await models.checkpoint() == 0 and await models.db.list_collection_names() == []
    finally:
        await stop_answering()

    # a rebuild alone under way: a projector starting waits for it (under `promptgen up`, an exit
    # 2 would have stopped everything), and starts once it has finished
    stop_answering = await claim(event_log, Identity(role="rebuild"))
    with capture_logs() as logs:
        starting = asyncio.create_task(bootstrap(settings))
        await eventually(lambda: asyncio.sleep(0, any(e["event"] == "projector_waiting_for_rebuild" for e in logs)),
                         what="the projector waiting for the rebuild")
    assert not starting.done() and await models.db.list_collection_names() == []
    await stop_answering()
    service = await asyncio.wait_for(starting, 30)
    await service.aclose()
    assert await run_rebuild(settings) == 0  # and alone, once nobody else writes
    # two rebuilds alone: the second one says the first is under way
    stop_answering = await claim(event_log, Identity(role="rebuild", host="elsewhere"))
    try:
        assert await run_rebuild(settings) == 1
    finally:
        await stop_answering()


async def test_promptgen_rebuild_alone_leaves_the_logs_retention_as_the_deployment_set_it(settings, event_log, models):
    """An operator's shell may lack the deployment's PROMPTGEN_EVENT_RETENTION_DAYS: a rebuild
    writing alone must not set the stream to the shell's (NATS would delete the older events)."""
    from services.adapters.parked import ParkedEvents
    from services.cli.rebuild import run_rebuild

    # an event the fold cannot read: the rebuild parks it, in the parked stream, which exists
    await event_log.js.publish("promptgen.template.junk.created", b"{not json", stream=event_log.stream)
    parked = ParkedEvents(event_log)
    await parked.ensure()
    before = (await event_log.js.stream_info(event_log.stream)).config
    kept = (await event_log.js.stream_info(parked.stream)).config.max_age
    shell = settings.model_copy(update={"stream_max_age_days": 1, "duplicate_window_seconds": 7})
    assert await run_rebuild(shell) == 0
    after = (await event_log.js.stream_info(event_log.stream)).config
    assert (after.max_age, after.duplicate_window) == (before.max_age, before.duplicate_window) != (86400, 7)
    assert [r.subject for r in await parked.list()] == ["promptgen.template.junk.created"]
    assert (await event_log.js.stream_info(parked.stream)).config.max_age == kept != 86400
