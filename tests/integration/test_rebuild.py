"""`promptgen rebuild`: the read models rebuilt from the log equal the live ones."""

from __future__ import annotations

import asyncio
import json

from services.adapters.event_log import EventLog
from services.adapters.read_models import ReadModels
from services.cli.rebuild import run_rebuild
from services.projector.rebuild import rebuild_into
from services.projector.scratch import Scratch
from tests.flows import create_personas, create_template, cycle_modes, follow_to_end, start_job
from tests.readmodels import snapshot
from tests.sse_client import read_sse
from tests.waiting import sent


async def _some_history(client, document, *, interaction: bool = True):
    template_id = await create_template(client, document)
    personas = await create_personas(client, template_id, 5)
    ids = [p["id"] for p in personas]
    for subset in (ids, ids[:2]):
        job = await start_job(client, template_id, cycle_modes(subset))
        await follow_to_end(client, job)
    if interaction:
        await client.post("/avatar-interactions", json={"mode": "try_mode", "persona_id": ids[0]})
    return ids


async def test_rebuild_into_fresh_collections_equals_the_live_projection(client, models, event_log,
                                                                         scenario_document):
    await _some_history(client, scenario_document)
    live = await snapshot(models)
    assert len(live["prompt_jobs"]) == 2 and len(live["personas_v2"]) == 5
    target = ReadModels(models.db, suffix="__check")
    await rebuild_into(event_log, target)
    assert await snapshot(target) == live
    assert await target.checkpoint() == await models.checkpoint()


async def test_promptgen_rebuild_switches_the_running_projector_to_rebuilt_collections(
    client, models, settings, scenario_document
):
    ids = await _some_history(client, scenario_document)
    before = await snapshot(models)
    # damage a read model: a rebuild must restore it from the log
    await models.personas.update_one({"_id": ids[0]}, {"$set": {"system_prompt": "tampered"}})
    await models.jobs.delete_many({})
    assert await run_rebuild(settings) == 0
    assert await snapshot(models) == before
    # the live projector carries on from the rebuilt checkpoint
    template_id = before["personas_v2"][0]["template_id"]
    job = await start_job(client, template_id, cycle_modes(ids[:1]))
    stream = await follow_to_end(client, job)
    assert stream.messages[-1].data["results"]["successful"] == 1
    assert await models.jobs.count_documents({}) == 3


async def test_rebuild_equals_live_for_cancelled_expired_and_failed_jobs(system, client, models, event_log):
    """Every kind of event, including ones the offline provider never causes, folds the same way."""
    from datetime import UTC, datetime, timedelta

    from contracts.events import JobCancelRequested, PersonaCompleted, PersonaFailed, PersonaProgress
    from tests.samples import job_requested

    await system.stop_service("generator")  # nobody works: the overdue job can only expire
    await system.stop_service("projector")  # restart the projector with a fast expiry sweep
    system.settings.expiry_sweep_seconds = 0.1
    system.start_service("projector")

    cancelled = job_requested("jc", ("a", "b")).model_copy(update={"deadline": datetime.now(UTC) + timedelta(hours=1)})
    expired = job_requested("je", ("c", "d")).model_copy(update={"deadline": datetime.now(UTC) - timedelta(seconds=1)})
    events = [
        cancelled,
        PersonaProgress(job_id="jc", persona_id="a"),
        PersonaCompleted(job_id="jc", persona_id="a", persona_name="A", mode="try_mode", generation_mode="assess_mode",
                         prompt="p", prompt_length=1, provider="offline", model="m"),
        JobCancelRequested(job_id="jc"),
        expired,
        PersonaFailed(job_id="je", persona_id="c", persona_name="C", mode="try_mode", error="LLM timeout",
                      error_code="llm_timeout", attempts=3),
    ]
    for event in events:
        await event_log.publish(event)
    for job_id, status in (("jc", "cancelled"), ("je", "expired")):
        await read_sse(client, f"/scenario/v2/prompt-generation-status/{job_id}")  # to the job's end
        view = (await client.get(f"/scenario/v2/job-status/{job_id}")).json()
        assert view["status"] == status, view
    live = await snapshot(models)
    target = ReadModels(models.db, suffix="__check")
    await rebuild_into(event_log, target)
    assert await snapshot(target) == live
    statuses = {d["_id"]: d["status"] for d in live["prompt_job_personas"]}
    assert statuses == {"jc:a": "completed", "jc:b": "cancelled", "je:c": "failed", "je:d": "failed"}


async def test_rebuild_progress_goes_only_to_the_requests_own_inbox(system, event_log, settings):
    """A caller cannot make the projector publish into the event log: a chosen progress
    subject is refused, a reply subject that is not an inbox is ignored."""
    import asyncio
    import json

    from services.cli.rebuild import _remote
    from services.projector.rebuild import CONTROL_SUBJECT

    nc = event_log.nc
    before = await event_log.last_seq()
    inbox = nc.new_inbox()
    answers = await nc.subscribe(inbox)
    request = json.dumps({"progress_subject": "promptgen.template.x.created"}).encode()
    for _ in range(500):  # until the projector listens (NATS answers "no responders" before)
        await nc.publish(CONTROL_SUBJECT, request, reply=inbox)
        msg = await answers.next_msg(timeout=5)
        if not (msg.headers and msg.headers.get("Status") == "503"):
            break
        await asyncio.sleep(0.02)
    answer = json.loads(msg.data)
    assert answer["accepted"] is False and "progress_subject" in answer["error"]
    await nc.publish(CONTROL_SUBJECT, b"{}", reply="promptgen.template.y.created")
    await nc.flush()

    # The CLI's way still works, with progress; and once it is done nothing reached the log.
    seen: list[tuple[int, int, str]] = []

    async def progress(done: int, total: int, *, stage: str = "writing") -> None:
        seen.append((done, total, stage))

    final = await _remote(event_log, progress)
    assert final.get("finished") and "error" not in final, final
    assert seen and seen[0] == (0, before, "writing")
    writing = [s for s in seen if s[2] == "writing"]
    assert writing[-1] == (before, before, "writing")  # all stored, then the switch: the bar says so
    switching = [s for s in seen if s[2] == "switching"]
    assert switching and switching == seen[len(writing):]
    assert switching[-1][0] == switching[-1][1]
    assert [done for done, _, _ in switching] == sorted(done for done, _, _ in switching)
    assert await event_log.last_seq() == before


async def test_a_log_folded_in_many_batches_rebuilds_the_same_read_models(client, models, event_log,
                                                                          scenario_document):
    """Batches far smaller than the log: personas created in one batch get their prompts in
    another, a job's end updates persona documents of earlier batches, and a creation stored
    twice (past the deduplication window) changes nothing, whatever batch it falls in."""
    from contracts.events import encode_event
    from contracts.subjects import ALL
    from services.projector.projections import PERSONAS
    from services.projector.rebuild import folded_batches
    from tests.waiting import eventually

    ids = await _some_history(client, scenario_document)
    created = (await event_log.last(f"promptgen.persona.{ids[0]}.created")).event
    again = created.model_copy(update={"persona": created.persona.model_copy(
        update={"name": "renamed by a late duplicate"})})
    ack = await event_log.js.publish(again.subject(), encode_event(again), stream=event_log.stream,
                                     headers={"Nats-Msg-Id": "stored-again"})
    job = await start_job(client, created.persona.template_id, cycle_modes(ids[:1]))  # the same persona again
    await read_sse(client, job["sse_endpoint"])

    async def caught_up() -> bool:
        return await models.checkpoint() == await event_log.last_seq()

    await eventually(caught_up, what="the projector reaching the end of the log")
    live = await snapshot(models)
    assert {p["_id"]: p["name"] for p in live["personas_v2"]}[ids[0]] == created.persona.name
    events = len([e async for e in event_log.read(ALL)])
    # ack.seq - 1: the duplicate opens a batch, with the persona's next prompt in it
    for batch_events in (1, 3, 7, ack.seq - 1, events):
        folds = [(fold, last) async for fold, last in folded_batches(event_log, batch_events=batch_events)]
        crossed = [fold for fold, _ in folds if fold.residual.get(PERSONAS)]
        if batch_events <= 7:
            assert crossed  # prompts of personas created batches before
        elif batch_events == events:
            assert len(folds) == 1 and not crossed
        else:
            holding = next(fold for fold, last in folds if last >= ack.seq)
            assert ids[0] in holding.collections[PERSONAS]  # folded as new: MongoDB will say it is not
        target = ReadModels(models.db, suffix=f"__batches{batch_events}")
        assert await rebuild_into(event_log, target, batch_events=batch_events) == await event_log.last_seq()
        assert await snapshot(target) == live, f"batches of {batch_events} events"
        assert await target.checkpoint() == await models.checkpoint()


async def test_the_switch_writes_only_the_differences_and_readers_see_the_rebuilt_documents(
    client, models, event_log, scenario_document
):
    """The live collections keep their names: the switch inserts what they lack, replaces what
    differs, deletes what the log does not hold, and leaves every other document alone."""
    from services.projector.projections import JOBS, PERSONAS, TEMPLATES
    from services.projector.rebuild import fold_into, merge_into, switch_to

    ids = await _some_history(client, scenario_document)
    before = await snapshot(models)
    job_ids = [j["_id"] for j in before["prompt_jobs"]]
    await models.personas.update_one({"_id": ids[0]}, {"$set": {"system_prompt": "tampered"}})
    await models.personas.update_one({"_id": ids[1]}, {"$unset": {"tenant": ""}})
    await models.jobs.delete_one({"_id": job_ids[0]})
    await models.templates.insert_one({"_id": "not-in-the-log", "template_id": "not-in-the-log"})
    assert (await client.get(f"/scenario/personas/{ids[0]}")).json()["system_prompt"] == "tampered"
    assert await models.jobs.find_one({"_id": job_ids[0]}) is None

    async with Scratch() as rebuilt:
        assert await fold_into(event_log, rebuilt) == await event_log.last_seq()
        steps: list[int] = []

        async def walked(n: int) -> None:
            steps.append(n)

        assert await merge_into(rebuilt, models, PERSONAS, walked, batch=2) == {"replaced": 2}
        assert sum(steps) == 5 and max(steps) <= 2  # progress in steps of the batch
        assert await merge_into(rebuilt, models, JOBS, walked) == {"inserted": 1}
        assert await merge_into(rebuilt, models, TEMPLATES, walked) == {"deleted": 1}
        assert await merge_into(rebuilt, models, JOBS, walked) == {}  # nothing left to write

        await switch_to(rebuilt, models)
    assert await snapshot(models) == before
    assert await models.checkpoint() == await event_log.last_seq()
    # Readers find the rebuilt documents under the names they always used.
    persona = (await client.get(f"/scenario/personas/{ids[0]}")).json()
    assert persona["system_prompt"] == next(p for p in before["personas_v2"] if p["_id"] == ids[0])["system_prompt"]
    assert (await client.get(f"/scenario/v2/job-status/{job_ids[0]}")).json()["status"] == "completed"
    assert (await client.get("/scenario/templates/not-in-the-log")).status_code == 404


async def test_the_switch_fills_empty_live_collections_and_empties_those_the_log_does_not_fill(
    client, models, event_log, scenario_document
):
    from services.projector.projections import INTERACTIONS, READ_MODELS

    await _some_history(client, scenario_document, interaction=False)  # the log holds no interaction
    before = await snapshot(models)
    for name in READ_MODELS:
        await models.collection(name).drop()
    await models.collection(INTERACTIONS).insert_one({"_id": "not-in-the-log", "mode": "try_mode"})
    assert await rebuild_into(event_log, models) == await event_log.last_seq()
    assert await snapshot(models) == {**before, INTERACTIONS: []}
    indexes = [index["name"] async for index in await models.job_personas.list_indexes()]
    assert len(indexes) > 1  # the live indexes are there again, not only _id's


class _FailingLog:
    """The event log, failing after its first batch: a rebuild that cannot finish."""

    def __init__(self, event_log) -> None:
        self._log = event_log

    def __getattr__(self, name):
        return getattr(self._log, name)

    async def read_batches(self, filter_subject, start_seq=1, max_batch=1000):
        async for batch in self._log.read_batches(filter_subject, start_seq, 1):
            yield batch
            raise ConnectionError("the event log went away")


async def test_a_failed_rebuild_leaves_the_live_read_models_as_they_were(
    client, models, event_log, scenario_document, tmp_path
):
    import pytest

    from services.projector.rebuild import SUFFIX

    ids = await _some_history(client, scenario_document)
    await models.personas.update_one({"_id": ids[0]}, {"$set": {"system_prompt": "live, not rebuilt"}})
    await models.db[f"personas_v2{SUFFIX}"].insert_one({"_id": "left by an earlier version's crashed rebuild"})
    before = await snapshot(models)
    checkpoint = await models.checkpoint()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(ConnectionError):
        await rebuild_into(_FailingLog(event_log), models, batch_events=1, scratch_dir=str(scratch))
    assert await snapshot(models) == before
    assert await models.checkpoint() == checkpoint
    assert list(scratch.iterdir()) == []  # what it had folded is gone
    # and the same rebuild, able to finish, replaces them
    assert await rebuild_into(event_log, models, scratch_dir=str(scratch)) == await event_log.last_seq()
    persona = await models.personas.find_one({"_id": ids[0]})
    assert persona["system_prompt"] != "live, not rebuilt"
    assert list(scratch.iterdir()) == []
    names = set(await models.db.list_collection_names())
    assert not {n for n in names if n.endswith(SUFFIX)}, names


async def test_a_rebuild_folds_in_the_configured_scratch_directory(client, models, event_log, settings,
                                                                     scenario_document, tmp_path, monkeypatch):
    """``PROMPTGEN_REBUILD_SCRATCH_DIR``: the projector's rebuild folds the log there (a disk with
    room for a file the size of the read models), and leaves nothing behind; what a killed
    rebuild left there is deleted when the projector starts."""
    import tempfile

    from services.projector import scratch as scratch_module
    from services.projector.bootstrap import bootstrap

    await _some_history(client, scenario_document)
    made_in: list[str | None] = []
    temporary_directory = tempfile.TemporaryDirectory

    def noting(*args, **kwargs):
        made_in.append(kwargs.get("dir"))
        return temporary_directory(*args, **kwargs)

    monkeypatch.setattr(scratch_module.tempfile, "TemporaryDirectory", noting)
    scratch = tmp_path / "scratch"
    abandoned = scratch / "promptgen-rebuild-killed"  # what a rebuild killed with an earlier projector left
    abandoned.mkdir(parents=True)
    (abandoned / "owner.lock").touch()
    (abandoned / "read_models.sqlite").write_bytes(b"x" * 1000)
    settings.rebuild_scratch_dir = str(scratch)
    # beside the running projector, as `promptgen rebuild` alone builds one (not asking who runs)
    service = await bootstrap(settings, event_log=event_log, models=models, presence=False)
    assert not abandoned.exists()  # swept as the projector starts
    try:
        assert await service.fold.rebuild(lambda done, total, **stage: asyncio.sleep(0)) == await event_log.last_seq()
    finally:
        await service.aclose()
    assert made_in == [str(scratch)] and list(scratch.iterdir()) == []


async def test_worker_processes_fold_the_log_as_the_projector_alone_does(
    client, models, event_log, settings, scenario_document
):
    """A rebuild read and folded by worker processes, a range of the log each, stores what the
    projector alone stores, whatever the ranges' size: with a creation stored twice, an event
    that does not decode (reported once), one of an unknown type, and events deleted from the
    log (one range left with none)."""
    from contracts.events import encode_event
    from services.projector.fold_workers import FoldWorkers
    from tests.waiting import eventually

    ids = await _some_history(client, scenario_document)
    created = (await event_log.last(f"promptgen.persona.{ids[0]}.created")).event
    await event_log.js.publish(created.subject(), encode_event(created), stream=event_log.stream,
                               headers={"Nats-Msg-Id": "stored-again"})
    bad = (await event_log.js.publish("promptgen.persona.x.created", b"{not json", stream=event_log.stream)).seq
    await event_log.js.publish("promptgen.persona.x.created", b'{"type": "persona.renamed", "version": 1}',
                               stream=event_log.stream)
    deleted = [(await event_log.js.publish("promptgen.persona.x.created", b"{}", stream=event_log.stream)).seq
               for _ in range(7)]
    for seq in deleted:
        await event_log.js.delete_msg(event_log.stream, seq)
    job = await start_job(client, created.persona.template_id, cycle_modes(ids[:2]))  # events after the gap
    await follow_to_end(client, job)
    last = await event_log.last_seq()

    async def caught_up() -> bool:
        return await models.checkpoint() == last

    await eventually(caught_up, what="the projector reaching the end of the log")
    live = await snapshot(models)
    alone = ReadModels(models.db, suffix="__alone")
    assert await rebuild_into(event_log, alone) == last
    assert await snapshot(alone) == live

    reported: list[tuple[int, str]] = []
    progress: list[int] = []

    async def unusable(stored, kind: str, error) -> None:
        reported.append((stored.seq, kind))

    async def stored(done: int, total: int, *, stage: str = "writing") -> None:
        if stage == "writing":
            progress.append(done)

    for batch_events in (3, 7, 1000):
        reported.clear()
        progress.clear()
        target = ReadModels(models.db, suffix=f"__workers{batch_events}")
        position = await rebuild_into(event_log, target, stored, batch_events=batch_events, unusable=unusable,
                                      workers=FoldWorkers(settings, 2))
        assert position == last
        assert await snapshot(target) == live, f"ranges of {batch_events} events"
        assert await target.checkpoint() == last
        assert reported == [(bad, "undecodable")]
        assert progress == sorted(progress) and progress[-1] == last  # in log order, to the end


async def test_a_rebuild_whose_worker_processes_cannot_read_the_log_fails_and_changes_nothing(
    client, models, event_log, settings, scenario_document
):
    import pytest

    from services.projector.fold_workers import FoldWorkers, WorkersFailed

    await _some_history(client, scenario_document, interaction=False)
    before = await snapshot(models)
    unreachable = settings.model_copy(update={"nats_url": "nats://127.0.0.1:9"})  # the discard port: nobody
    with pytest.raises(WorkersFailed, match=r"the range 1 to \d+ of the log unread .*PROMPTGEN_REBUILD_PROCESSES=1"):
        await rebuild_into(event_log, models, workers=FoldWorkers(unreachable, 2, connect_timeout=1))
    assert await snapshot(models) == before


async def test_a_rebuild_whose_worker_cannot_read_its_range_fails_naming_it_and_changes_nothing(
    client, models, event_log, settings, scenario_document
):
    """An error inside a worker (here: its log is not there) is raised with the range it was
    reading."""
    import pytest

    from services.projector.fold_workers import FoldWorkers, WorkersFailed

    await _some_history(client, scenario_document, interaction=False)
    before = await snapshot(models)
    elsewhere = settings.model_copy(update={"stream": "PROMPTGEN_NOT_THERE"})
    with pytest.raises(WorkersFailed, match=r"the range 1 to \d+ of the log failed: NotFoundError"):
        await rebuild_into(event_log, models, workers=FoldWorkers(elsewhere, 2))
    assert await snapshot(models) == before


async def test_a_failed_rebuild_is_reported_with_a_reason_even_when_its_error_says_nothing(event_log):
    from services.cli.rebuild import _remote
    from services.projector.rebuild import serve_rebuild_requests
    from services.runtime.metrics import Metrics

    async def silent_failure(progress) -> int:
        await progress(3, 4)
        raise TimeoutError()  # str() of it is empty

    metrics = Metrics()
    await serve_rebuild_requests(event_log, silent_failure, metrics=metrics)

    final = await _remote(event_log, _unwatched)
    assert final == {"finished": True, "error": "TimeoutError"}
    assert _sample(metrics, "promptgen_rebuilds_total", outcome="failed") == 1
    assert _sample(metrics, "promptgen_rebuilds_total", outcome="completed") == 0
    assert _sample(metrics, "promptgen_rebuild_running") == 0
    assert _sample(metrics, "promptgen_rebuild_progress_ratio", stage="writing") == 0.75
    assert _sample(metrics, "promptgen_rebuild_duration_seconds_count") == 1


async def test_a_rebuild_shows_in_the_metrics_while_it_runs_and_when_it_ends(event_log):
    from services.cli.rebuild import _remote
    from services.projector.rebuild import SWITCHING, serve_rebuild_requests
    from services.runtime.metrics import Metrics

    metrics = Metrics()
    seen_running = []

    async def rebuild(progress) -> int:
        seen_running.append(_sample(metrics, "promptgen_rebuild_running"))
        await progress(10, 10)
        await progress(1, 2, stage=SWITCHING)
        await progress(2, 2, stage=SWITCHING)
        return 10

    await serve_rebuild_requests(event_log, rebuild, metrics=metrics)

    assert (await _remote(event_log, _unwatched))["position"] == 10
    assert seen_running == [1] and _sample(metrics, "promptgen_rebuild_running") == 0
    assert _sample(metrics, "promptgen_rebuilds_total", outcome="completed") == 1
    assert _sample(metrics, "promptgen_rebuild_progress_ratio", stage="writing") == 1
    assert _sample(metrics, "promptgen_rebuild_progress_ratio", stage="switching") == 1


async def test_a_rebuild_cut_short_by_the_projector_stopping_is_told_and_counted(settings, models, event_log,
                                                                                   monkeypatch):
    """The projector's shutdown stops a rebuild under way while it can still say so: the
    caller hears that it was stopped (and does not wait out its own timeout)."""
    from services.cli.rebuild import _remote
    from services.projector.fold import Fold
    from tests.conftest import InProcessSystem

    started = asyncio.Event()

    async def endless(self, progress) -> int:
        started.set()
        await asyncio.Event().wait()
        return 0

    monkeypatch.setattr(Fold, "rebuild", endless)

    async def ask() -> dict:
        from nats.errors import NoRespondersError

        while True:  # until the projector listens
            try:
                return await _remote(event_log, _unwatched)
            except NoRespondersError:
                await asyncio.sleep(0.05)

    system = await InProcessSystem(settings).start(generator=False)
    asked = asyncio.ensure_future(ask())
    try:
        await asyncio.wait_for(started.wait(), 10)
        await system.stop_service("projector")
        final = await asyncio.wait_for(asked, 10)
    finally:
        asked.cancel()
        await system.close()
    assert final["finished"] and "stopped before the rebuild ended" in final["error"]
    metrics = system.metrics["projector"]
    assert _sample(metrics, "promptgen_rebuilds_total", outcome="cancelled") == 1
    assert _sample(metrics, "promptgen_rebuilds_total", outcome="failed") == 0  # there from the start
    assert _sample(metrics, "promptgen_rebuild_running") == 0


async def _unwatched(done: int, total: int, *, stage: str = "writing") -> None:
    """A rebuild's progress, not shown."""


def _sample(metrics, name: str, **labels) -> float | None:
    return metrics.registry.get_sample_value(name, labels or None)


async def test_a_range_not_folded_in_time_fails_the_rebuild_and_its_workers_are_stopped(
    client, models, event_log, settings, scenario_document
):
    import multiprocessing

    import pytest

    from services.projector.fold_workers import FoldWorkers, WorkersFailed
    from tests.waiting import eventually

    await _some_history(client, scenario_document, interaction=False)
    before = await snapshot(models)
    with pytest.raises(WorkersFailed, match="not folded within 0.01 s"):  # a worker's start alone takes longer
        await rebuild_into(event_log, models, workers=FoldWorkers(settings, 2, deadline=0.01))
    assert await snapshot(models) == before

    async def workers_gone() -> bool:
        return not [p for p in multiprocessing.active_children() if "SpawnProcess" in p.name]

    await eventually(workers_gone, what="the rebuild's worker processes ending")


async def test_a_quiet_rebuild_keeps_its_caller_and_a_vanished_projector_is_reported(event_log, monkeypatch):
    """Between progress reports the projector beats, so a long quiet stage is waited for; a
    projector killed mid-rebuild says nothing more, and the caller says so after a silence
    instead of waiting for ever."""
    import services.cli.rebuild as cli
    import services.projector.rebuild as served

    monkeypatch.setattr(served, "HEARTBEAT_SECONDS", 0.1)
    monkeypatch.setattr(cli, "SILENCE_SECONDS", 1.0)

    dying = await EventLog.connect(event_log.settings, "a-projector-about-to-die")
    try:
        async def accept_then_die(msg) -> None:
            await msg.respond(json.dumps({"accepted": True}).encode())

        await dying.nc.subscribe(served.CONTROL_SUBJECT, cb=accept_then_die)
        await sent(dying.nc)  # the server has the subscription before another connection asks
        final = await cli._remote(event_log, _unwatched)
    finally:
        await dying.close()
    assert "said nothing for 1 s" in final["error"] and "ask for the rebuild again" in final["error"]

    async def quiet(progress) -> int:
        await asyncio.sleep(2.5)  # longer than the silence: only the beats say it is there
        return 7

    await served.serve_rebuild_requests(event_log, quiet)
    assert (await cli._remote(event_log, _unwatched))["position"] == 7


async def test_a_rebuild_of_a_log_whose_oldest_events_aged_out_keeps_what_only_they_made(
    client, models, event_log, scenario_document
):
    """Templates, personas and interactions outlive the log (30 days by default): a rebuild of a
    log whose oldest events aged out cannot make them again, and deleted them."""
    from contextlib import suppress

    from nats.js.errors import NotFoundError

    from contracts import subjects

    template_id = await create_template(client, scenario_document)
    await create_personas(client, template_id, 2)
    target = ReadModels(models.db, suffix="__aged")
    assert await rebuild_into(event_log, target) == await event_log.last_seq()  # the whole log, then
    whole = await snapshot(target)
    created = await event_log.last_seq_on(subjects.template_created(template_id))
    for seq in range(1, created + 1):  # the log's oldest events age out, the template's creation with them
        with suppress(NotFoundError):
            await event_log.js.delete_msg(event_log.stream, seq)
    assert (await event_log.state()).first_seq > created
    await rebuild_into(event_log, target)
    assert await target.templates.find_one({"_id": template_id}) is not None
    assert await snapshot(target) == whole
