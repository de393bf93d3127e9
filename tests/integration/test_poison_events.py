"""A consumer never stops on one event: what it cannot decode or store is parked, the rest
goes on, and a parked event is applied again once a fix is deployed.

The events here are published straight to the log, as a buggy producer (or another
service, or an older or newer version) could: the gateway's own door is tested elsewhere.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from structlog.testing import capture_logs

from contracts import subjects
from contracts.events import UPCASTERS, encode_event
from services.adapters.event_log import StoredEvent
from services.adapters.parked import ParkedEvents
from services.projector import job_manager
from tests.flows import create_personas, create_template, cycle_modes, follow_to_end, start_job
from tests.samples import job_requested, persona, sample
from tests.sse_client import read_sse
from tests.waiting import eventually, sent


async def _raw(event_log, subject: str, data: bytes) -> int:
    ack = await event_log.js.publish(subject, data, stream=event_log.stream)
    return ack.seq


def _interaction(avatars: list, interaction_id: str) -> bytes:
    return json.dumps({"type": "interaction.created", "interaction_id": interaction_id,
                       "mode": "learn_mode", "avatars": avatars}, separators=(",", ":")).encode()


def _deep(levels: int) -> list:
    value: list = []
    for _ in range(levels):
        value = [value]
    return value


async def _parked(client, consumer: str | None = None) -> dict[int, dict]:
    r = await client.get("/admin/parked", params={"consumer": consumer} if consumer else {})
    assert r.status_code == 200, r.text
    return {p["seq"]: p for p in r.json()["parked"]}


async def _caught_up(models, seq: int) -> bool:
    return await models.checkpoint() >= seq


async def _run_a_job(client, scenario_document: str, count: int = 3) -> dict:
    template_id = await create_template(client, scenario_document)
    personas = await create_personas(client, template_id, count)
    job = await start_job(client, template_id, cycle_modes([p["id"] for p in personas]))
    stream = await follow_to_end(client, job)  # the read models hold the whole job from here
    assert stream.messages[-1].data["type"] == "results", stream.messages[-1]
    return stream.messages[-1].data["results"]


async def test_the_projector_parks_what_it_cannot_read_or_store_and_goes_on(
    client, event_log, models, scenario_document
):
    big = await _raw(event_log, subjects.interaction_created("big"), _interaction([0] * 3_500_000, "big"))
    poison = {
        await _raw(event_log, subjects.interaction_created("deep"), _interaction([_deep(220)], "deep")): "undecodable",
        await _raw(event_log, subjects.interaction_created("nul"), _interaction([{"a\x00b": 1}], "nul")): "unstorable",
        big: "unstorable",
        await _raw(event_log, subjects.template_created("junk"), b"\xff\xfe not an event"): "undecodable",
    }
    unknown = await _raw(event_log, subjects.template_created("future"),
                         json.dumps({"type": "template.archived", "template_id": "future"}).encode())
    # A newer producer added a field: this version reads the rest.
    newer = json.loads(encode_event(_persona_created("p-newer")))
    newer["persona"]["favourite_colour"] = "teal"
    newer["added_later"] = {"anything": True}
    last = await _raw(event_log, subjects.persona_created("p-newer"), json.dumps(newer).encode())

    await eventually(lambda: _caught_up(models, last), what="the projector passing the poison")
    r = await client.get("/scenario/personas/p-newer")
    assert r.status_code == 200 and r.json()["name"] == "Dr. Smith"

    # The system keeps serving: a new template is readable at once, a job ends with its results.
    results = await _run_a_job(client, scenario_document)
    assert results["successful"] == 3

    parked = await _parked(client, "projector")
    assert {seq: p["error_kind"] for seq, p in parked.items()} == poison
    assert unknown not in parked  # a type this version does not know is skipped, not parked
    assert all(len(p["first_bytes"]) < 1000 and p["error"] for p in parked.values())
    assert "larger than" in parked[big]["error"]


def _persona_created(pid: str):
    from contracts.events import PersonaCreated

    return PersonaCreated(persona=persona(pid))


async def test_a_parked_event_is_applied_again_once_a_fix_is_deployed(client, event_log, models, monkeypatch):
    # Version 0 of persona.created (an older producer) called the name "full_name"; this
    # version has no upcaster for it yet, so the projector parks it.
    old = json.loads(encode_event(_persona_created("p-old")))
    old["version"] = 0
    old["persona"]["full_name"] = old["persona"].pop("name")
    seq = await _raw(event_log, subjects.persona_created("p-old"), json.dumps(old).encode())
    await eventually(lambda: _caught_up(models, seq), what="the projector passing the old event")
    assert (await client.get("/scenario/personas/p-old")).status_code == 404
    assert (await _parked(client, "projector"))[seq]["error_kind"] == "undecodable"

    # Re-applied before the fix: still parked, with the reason.
    r = await client.post("/admin/parked/reapply", json={"consumer": "projector", "seqs": [seq]})
    assert r.status_code == 200 and r.json()["reapplied"] == [] and r.json()["still_parked"][0]["seq"] == seq

    # The fix: an upcaster from version 0 to 1.
    def rename_full_name(obj: dict) -> dict:
        p = dict(obj["persona"])
        p["name"] = p.pop("full_name")
        return {**obj, "persona": p}

    monkeypatch.setitem(UPCASTERS, ("persona.created", 0), rename_full_name)
    r = await client.post("/admin/parked/reapply", json={"consumer": "projector"})
    assert r.status_code == 200 and r.json()["reapplied"] == [seq], r.text
    assert (await client.get("/scenario/personas/p-old")).json()["name"] == "Dr. Smith"
    assert await _parked(client) == {}


async def test_a_parked_event_that_will_never_apply_is_discarded_by_name_and_stays_in_the_log(
        client, event_log, models):
    kept, dropped = [await _raw(event_log, subjects.persona_created(f"p-junk-{n}"), b"not json") for n in (1, 2)]
    await eventually(lambda: _caught_up(models, dropped), what="the projector passing the junk")
    assert set(await _parked(client, "projector")) == {kept, dropped}

    r = await client.post("/admin/parked/discard", json={"consumer": "projector", "seqs": []})
    assert r.status_code == 422 and "seqs" in r.text  # no "all" by omission
    with capture_logs() as logs:
        r = await client.post("/admin/parked/discard",
                              json={"consumer": "projector", "seqs": [dropped, 10**9], "reason": "test junk"})
    assert r.status_code == 200, r.text
    assert r.json() == {"consumer": "projector", "discarded": [dropped], "not_parked": [10**9]}
    assert set(await _parked(client, "projector")) == {kept}
    (line,) = [e for e in logs if e["event"] == "parked_discarded"]
    assert (line["seq"], line["reason"]) == (dropped, "test junk")
    assert line["subject"] == subjects.persona_created("p-junk-2")
    stored = await event_log.at(dropped)
    assert stored is not None and stored.data == b"not json"  # the list forgets it; the log does not


async def test_a_job_decision_that_fails_is_parked_and_other_jobs_still_end(
    client, event_log, monkeypatch, scenario_document
):
    template_id = await create_template(client, scenario_document)
    personas = await create_personas(client, template_id, 2)
    decide = job_manager.decide_job_end
    # Doomed by its persona, known before the job starts: its job id is known only once the
    # POST answers, and the job can end before the test reads that answer.
    doomed = {personas[0]["id"]}

    def broken_for_one_job(job, personas_, now):
        if any(p["persona_id"] in doomed for p in personas_):
            raise ValueError("a bug in deciding this job")
        return decide(job, personas_, now)

    monkeypatch.setattr(job_manager, "decide_job_end", broken_for_one_job)
    first = await start_job(client, template_id, {personas[0]["id"]: "try_mode"})
    second = await start_job(client, template_id, {personas[1]["id"]: "assess_mode"})
    stream = await read_sse(client, second["sse_endpoint"])
    assert stream.messages[-1].data["type"] == "results"

    async def decision_parked():
        return (await _parked(client, "job-manager")) or None

    parked = await eventually(decision_parked, what="the failed decision being parked")
    (record,) = parked.values()
    assert record["job_id"] == first["job_id"] and "a bug in deciding" in record["error"]

    doomed.clear()  # the fix is deployed
    r = await client.post("/admin/parked/reapply", json={"consumer": "job-manager"})
    assert r.status_code == 200 and r.json()["reapplied"] == [record["seq"]], r.text
    stream = await read_sse(client, first["sse_endpoint"])
    assert stream.messages[-1].data["type"] == "results"


async def test_the_generator_parks_work_it_cannot_read_and_keeps_working(client, event_log, scenario_document,
                                                                         monkeypatch):
    """Garbage is parked at once; work of a newer version is given back for a newer generator
    to take, a few times, then parked too (terminated, it would be lost for good)."""
    from services.generator import consumers

    monkeypatch.setattr(consumers, "NEWER_RETRY_SECONDS", 0.05)
    job_id = str(uuid.uuid4())
    bad_request = await _raw(event_log, subjects.job(job_id, "requested"), b'{"type": "job.requested"}')
    bad_item = await _raw(event_log, subjects.job_persona(job_id, "p1", "requested"), b"[1, 2, 3]")
    newer = await _raw(event_log, subjects.job_persona(job_id, "p2", "requested"),
                       json.dumps({"type": "persona.prompt_requested", "version": 9}).encode())

    with capture_logs() as logs:
        results = await _run_a_job(client, scenario_document)
        assert results["successful"] == 3

        async def all_parked():
            dispatcher = await _parked(client, "generator-dispatcher")
            workers = await _parked(client, "generator-workers")
            return (dispatcher, workers) if bad_request in dispatcher and {bad_item, newer} <= set(workers) else None

        dispatcher, workers = await eventually(all_parked, what="the generator parking the bad messages")
    assert set(dispatcher) == {bad_request} and set(workers) == {bad_item, newer}
    assert "a newer version's" in workers[newer]["error"]
    offered = [e["deliveries"] for e in logs if e["event"] == "event_left_for_newer" and e["seq"] == newer]
    assert offered == list(range(1, len(offered) + 1)) and len(offered) >= 1


@pytest.mark.parametrize("consumer", ["generator-workers"])
async def test_reapply_without_a_running_consumer_says_so(client, consumer, system):
    await system.stop_service("generator")
    r = await client.post("/admin/parked/reapply", json={"consumer": consumer})
    assert r.status_code == 503 and r.json()["code"] == "consumer_not_running"
    assert r.headers["retry-after"]


async def test_a_rebuild_parks_the_poison_and_equals_the_live_projection(client, event_log, models, settings,
                                                                        scenario_document, system):
    from services.cli.rebuild import run_rebuild
    from tests.metrics_text import sample
    from tests.readmodels import snapshot

    nul = await _raw(event_log, subjects.interaction_created("nul"), _interaction([{"a\x00b": 1}], "nul"))
    junk = await _raw(event_log, subjects.template_created("junk"), b"{not json")
    await _run_a_job(client, scenario_document)
    live = await snapshot(models)

    def parked_count() -> float | None:
        return sample(system.metrics["projector"].exposition(), "promptgen_parked_events_total", consumer="projector")

    assert parked_count() == 2
    await models.templates.delete_many({})  # damage: the rebuild restores it from the log
    assert await run_rebuild(settings) == 0
    assert await snapshot(models) == live
    parked = await _parked(client, "projector")
    assert set(parked) == {nul, junk}
    assert parked_count() == 2  # parked again by the rebuild, not counted again: an alert fires once


async def test_promptgen_parked_lists_and_reapplies_from_the_command_line(client, event_log, models, settings):
    import asyncio
    import os
    import sys

    junk = await _raw(event_log, subjects.template_created("junk"), b"{not json")
    await eventually(lambda: _caught_up(models, junk), what="the projector passing the junk")
    env = {**os.environ, "NATS_URL": settings.nats_url, "PROMPTGEN_STREAM": settings.stream}

    async def promptgen(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.cli", *args, env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode, out.decode(), err.decode()

    code, out, _ = await promptgen("parked", "list", "--json")
    (line,) = out.splitlines()
    assert code == 0 and json.loads(line)["seq"] == junk and json.loads(line)["consumer"] == "projector"
    code, _, err = await promptgen("parked", "reapply", "projector", str(junk))
    assert code == 1 and "still parked" in err and str(junk) in err  # no fix deployed: it stays
    # a sequence that is not parked is said to be, not counted as "re-applied 0" and exit 0
    code, _, err = await promptgen("parked", "reapply", "projector", str(junk + 1000))
    assert code == 1 and "not parked" in " ".join(err.split()) and str(junk + 1000) in err, err


async def test_replay_and_the_events_endpoint_show_what_they_cannot_read(client, system, event_log, settings,
                                                                         scenario_document):
    from services.cli.replay import show_job_history

    template_id = await create_template(client, scenario_document)
    personas = await create_personas(client, template_id, 1)
    await system.stop_service("generator")  # the job cannot end before the junk is in its history
    job = await start_job(client, template_id, cycle_modes([personas[0]["id"]]))
    junk = await _raw(event_log, subjects.job_persona(job["job_id"], "x", "progress"), b"\x00junk")
    future = await _raw(event_log, subjects.job_persona(job["job_id"], "x", "rated"),
                        json.dumps({"type": "persona.rated", "job_id": job["job_id"]}).encode())
    system.start_service("generator")
    await read_sse(client, job["sse_endpoint"])
    r = await client.get(f"/scenario/v2/jobs/{job['job_id']}/events")
    assert r.status_code == 200
    by_seq = {e["seq"]: e for e in r.json()["events"]}
    assert by_seq[junk]["type"] == "undecodable" and "not JSON" in by_seq[junk]["error"]
    assert by_seq[future]["type"] == "persona.rated" and by_seq[future]["status"] == "unknown"
    assert r.json()["events"][-1]["type"] == "job.completed"
    assert await show_job_history(settings, job["job_id"], as_json=True) == 0


async def test_a_rebuild_reports_what_it_cannot_store_and_rebuilds_the_rest(
    client, event_log, models, scenario_document
):
    """What the live fold parks as unstorable, a rebuild reports as unstorable too; every other
    document is rebuilt as the live fold wrote it."""
    from services.adapters.read_models import ReadModels
    from services.projector.rebuild import rebuild_into
    from tests.readmodels import snapshot

    unstorable = {
        await _raw(event_log, subjects.interaction_created("nul"), _interaction([{"a\x00b": 1}], "nul")),
        await _raw(event_log, subjects.interaction_created("big"), _interaction([0] * 3_500_000, "big")),
    }
    poisoned = await event_log.last_seq()
    await eventually(lambda: _caught_up(models, poisoned), what="the projector passing the poison")
    await _run_a_job(client, scenario_document)
    last = await event_log.last_seq()
    await eventually(lambda: _caught_up(models, last), what="the projector reaching the end of the log")
    assert set(await _parked(client, "projector")) == unstorable

    reported: dict[int, tuple[str, str]] = {}

    async def unusable(stored, kind: str, error) -> None:
        reported[stored.seq] = (kind, str(error))

    target = ReadModels(models.db, suffix="__check")
    assert await rebuild_into(event_log, target, unusable=unusable) == await event_log.last_seq()
    assert {seq: kind for seq, (kind, _) in reported.items()} == dict.fromkeys(unstorable, "unstorable")
    assert "larger than" in reported[max(unstorable)][1]
    assert await snapshot(target) == await snapshot(models)
    assert len((await snapshot(target))["prompt_jobs"]) == 1


async def test_garbage_on_an_end_subject_is_no_end(client, system, event_log, scenario_document):
    """A buggy producer's bytes on a running job's end subject, and on a persona's: the job is not
    taken for ended (a stream resumed after them goes on, a cancel is taken) and the persona's
    work is still done."""
    await system.stop_service("generator")  # the job stays running while the garbage is written
    template_id = await create_template(client, scenario_document)
    persona_ = (await create_personas(client, template_id, 1))[0]
    job = await start_job(client, template_id, {persona_["id"]: "learn_mode"})
    job_id = job["job_id"]
    end = await _raw(event_log, subjects.job(job_id, "completed"), b'{"type": "job.completed", "garbage": true}')
    await _raw(event_log, subjects.job(job_id, "cancel_requested"), b"{")  # no cancel: the work is still done
    terminal = subjects.job_persona(job_id, persona_["id"], "completed")
    garbage = await _raw(event_log, terminal, b"not json")
    assert await event_log.first_readable_on([terminal]) is None  # a redelivered item is still worked on

    async with client.stream("GET", job["sse_endpoint"], headers={"Last-Event-ID": str(end)}) as resumed:
        assert resumed.status_code == 200  # not 204, "nothing left": the job has not ended
    system.start_service("generator")
    stream = await follow_to_end(client, job)
    results = stream.messages[-1].data["results"]
    assert results["successful"] == 1 and results["personas"][persona_["id"]]["status"] == "completed"
    await _raw(event_log, terminal, b"\x00")  # garbage after the real one: the real one still counts
    assert (await event_log.first_readable_on([terminal])).seq > garbage
    refused = await client.post(f"/scenario/v2/jobs/{job_id}/cancel")
    assert refused.status_code == 409  # the real end, now in the log, is one


async def test_a_reapply_the_consumer_does_not_answer_in_time_is_said_so(event_log):
    """Not "NATS did not answer": the consumer took the request and may still be re-applying."""
    from services.adapters.parked import CONTROL, ConsumerSlow, request_reapply

    async def busy(msg) -> None:  # takes the request, answers nothing in time
        pass

    await event_log.subscribe(CONTROL.format(consumer="projector"), busy)
    with pytest.raises(ConsumerSlow, match="did not answer within 0.3 s; it may still be re-applying"):
        await request_reapply(event_log, "projector", None, timeout=0.3)


async def test_an_event_on_another_events_subject_is_read_by_no_consumer(client, event_log, models, settings):
    """A well-formed job request for job B published on job A's subject: the projector would have
    made job B while the job manager, which learns a job from its subjects, found no request for
    it (B running for ever); a persona's outcome on another persona's subject would have written
    a prompt where no work was asked. Each is parked as what it is, and nothing is made of it."""
    forged_job = str(uuid.uuid4())
    request = job_requested(forged_job).model_copy(update={"deadline": datetime.now(UTC) + timedelta(minutes=30)})
    victim = str(uuid.uuid4())
    misplaced = await _raw(event_log, subjects.job(victim, "requested"), encode_event(request))
    outcome = sample("persona.completed").model_copy(update={"job_id": forged_job, "persona_id": "p-victim"})
    moved = await _raw(event_log, subjects.job_persona(forged_job, "p-elsewhere", "completed"), encode_event(outcome))

    async def parked_by_all():
        found = {c: await _parked(client, c) for c in ("projector", "generator-dispatcher")}
        return found if misplaced in found["generator-dispatcher"] and moved in found["projector"] else None

    found = await eventually(parked_by_all, what="the misplaced events parked")
    assert misplaced in found["projector"]
    said = found["projector"][misplaced]
    assert said["error_kind"] == "undecodable" and f"published on {subjects.job(victim, 'requested')}" in said["error"]
    assert f"not on its own subject {subjects.job(forged_job, 'requested')}" in said["error"]
    assert (await client.get(f"/scenario/v2/job-status/{forged_job}")).status_code == 404
    unreadable = await client.get(f"/scenario/v2/job-status/{victim}")  # as for any garbage on its subject
    assert unreadable.status_code == 500 and unreadable.json()["code"] == "event_unreadable", unreadable.text
    assert await models.personas.find_one({"_id": "p-victim"}) is None


async def test_a_parked_record_that_does_not_read_hides_no_other(event_log):
    """A record of the parked stream this version cannot read (a stray publish, another version's)
    is passed over with a warning: the operator still sees, and can re-apply, every other one."""
    parked = ParkedEvents(event_log)
    poison = StoredEvent(seq=5, time=datetime.now(UTC), subject=subjects.persona_created("x"), event=None,
                         data=b"{not json")
    await parked.park("projector", poison, "undecodable", "not JSON")
    await event_log.publish_to(parked.stream, parked._subject("projector", 6), b"not a parked record")
    with capture_logs() as logs:
        assert [(r.consumer, r.seq) for r in await parked.list()] == [("projector", 5)]
        assert [(r.consumer, r.seq) for r in await parked.list("projector")] == [("projector", 5)]
    assert [line["event"] for line in logs if line["log_level"] == "warning"] == ["parked_record_unreadable"] * 2


async def test_promptgen_parked_discard_drops_the_record_and_names_what_was_not_parked(settings, event_log, capsys):
    from services.cli.parked import discard_parked

    parked = ParkedEvents(event_log)
    seq = await _raw(event_log, subjects.persona_created("p-junk"), b"junk")
    await parked.park("projector", await event_log.at(seq), "undecodable", "not JSON")
    with capture_logs() as logs:
        assert await discard_parked(settings, "projector", [seq, seq + 1000], "junk") == 1  # one was not parked
    said = capsys.readouterr().err
    (line,) = [e for e in logs if e["event"] == "parked_discarded"]
    assert line["by"].startswith("promptgen parked discard, ") and "@" in line["by"]  # who, on which host
    assert "discarded 1" in said and f"not parked by projector: [{seq + 1000}]" in said
    assert await parked.list("projector") == []


async def test_a_reapply_asked_again_while_one_runs_is_told_so_not_queued(event_log):
    """After a 504 the caller is told to ask again: a second full re-apply must not queue up
    behind the first (for the projector, each one holds the live fold)."""
    import asyncio

    from services.adapters.parked import ReapplyRunning, request_reapply

    parked = ParkedEvents(event_log)
    seq = await _raw(event_log, subjects.persona_created("p-slow"), b"junk")
    await parked.park("projector", await event_log.at(seq), "undecodable", "not JSON")
    going, release, calls = asyncio.Event(), asyncio.Event(), []

    async def slow(record) -> None:
        calls.append(record.seq)
        going.set()
        await release.wait()

    await parked.serve("projector", slow)
    first = asyncio.create_task(request_reapply(event_log, "projector", None, timeout=30))
    await asyncio.wait_for(going.wait(), 10)
    with pytest.raises(ReapplyRunning, match="already running"):
        await request_reapply(event_log, "projector", None, timeout=10)
    release.set()
    assert (await first).reapplied == [seq] and calls == [seq]


async def test_a_reapply_asks_for_some_events_or_all_and_a_consumer_that_fails_is_a_502(client, system, event_log):
    """An empty list is not "all": a client that sends the events it selected, with none
    selected, must not re-apply every parked event. A consumer that fails before it has an
    answer (its database away) is a 502 naming it, not a 500."""
    from services.adapters.parked import CONTROL

    r = await client.post("/admin/parked/reapply", json={"consumer": "projector", "seqs": []})
    assert r.status_code == 422 and r.json()["field"] == "seqs", r.text

    await system.stop_service("generator")

    async def failing(msg) -> None:  # a workers' process whose parked list cannot be read
        await msg.respond(json.dumps({"error": "ServerSelectionTimeoutError: no MongoDB"}).encode())

    await event_log.subscribe(CONTROL.format(consumer="generator-workers"), failing, queue="reapply")
    await sent(event_log.nc)  # the server has the subscription before the gateway asks
    r = await client.post("/admin/parked/reapply", json={"consumer": "generator-workers"})
    assert r.status_code == 502 and r.json()["code"] == "reapply_failed", r.text
    assert "no MongoDB" in r.json()["detail"] and r.json()["field"] == "consumer"
