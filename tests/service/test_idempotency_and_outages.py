"""A job named by an Idempotency-Key starts once however often it is asked for, and NATS or
MongoDB not answering is a 503 the client can act on (a job NATS did not confirm is named)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from nats.errors import TimeoutError as NatsTimeout
from pymongo.errors import OperationFailure, ServerSelectionTimeoutError

from contracts import subjects
from contracts.events import JobRequested, PersonaCreated
from tests.conftest import SCENARIO
from tests.flows import create_personas, create_template
from tests.waiting import eventually


async def _requested(memory_log, job_id: str) -> list:
    return [s async for s in memory_log.read(subjects.job(job_id, "requested"))]


async def test_a_request_sent_again_with_its_idempotency_key_starts_one_job(gateway, memory_log):
    template_id = await create_template(gateway, SCENARIO)
    ids = [p["id"] for p in await create_personas(gateway, template_id, 2)]
    body = {"template_id": template_id, "persona_ids": ids, "mode_mapping": {i: "try_mode" for i in ids}}

    async def post(key: str, json: dict = body):
        return await gateway.post("/scenario/v2/generate-final-prompts", json=json, headers={"Idempotency-Key": key})

    first = await post("order-17")
    assert first.status_code == 202, first.text
    job_id = first.json()["job_id"]
    again = await asyncio.gather(*(post("order-17") for _ in range(4)))  # a client's retries, some at once
    assert {r.status_code for r in again} == {202} and {r.json()["job_id"] for r in again} == {job_id}
    assert all(r.json()["persona_count"] == 2 for r in again)
    assert len(await _requested(memory_log, job_id)) == 1
    reordered = await post("order-17", {**body, "persona_ids": ids[::-1]})  # the same request
    assert reordered.status_code == 202 and reordered.json()["job_id"] == job_id, reordered.text

    other = await post("order-17", {**body, "mode_mapping": {i: "learn_mode" for i in ids}})
    assert other.status_code == 409 and other.json()["code"] == "idempotency_key_reused", other.text
    assert other.json()["field"] == "Idempotency-Key" and other.json()["ids"] == [job_id]
    # two different requests with one key at the same time: one starts, the other is told
    learn, assess = ({**body, "mode_mapping": {i: m for i in ids}} for m in ("learn_mode", "assess_mode"))
    raced = await asyncio.gather(post("order-19", learn), post("order-19", assess))
    assert sorted(r.status_code for r in raced) == [202, 409], [r.text for r in raced]
    fresh = await post("order-18")
    assert fresh.status_code == 202 and fresh.json()["job_id"] != job_id
    unkeyed = await gateway.post("/scenario/v2/generate-final-prompts", json=body)
    assert unkeyed.json()["job_id"] not in (job_id, fresh.json()["job_id"])
    bad = await post("no spaces allowed")
    assert bad.status_code == 422 and bad.json()["field"] == "Idempotency-Key", bad.text
    # two keys may name two jobs: which one counts is not guessed
    twice = await gateway.post("/scenario/v2/generate-final-prompts", json=body,
                               headers=[("Idempotency-Key", "order-17"), ("Idempotency-Key", "order-20")])
    assert twice.status_code == 422 and twice.json()["field"] == "Idempotency-Key", twice.text
    assert "once" in twice.json()["detail"]
    assert len(await _requested(memory_log, job_id)) == 1


async def test_a_job_nats_did_not_confirm_is_a_503_naming_it_and_its_key_gets_it_later(gateway, memory_log,
                                                                                        monkeypatch):
    template_id = await create_template(gateway, SCENARIO)
    ids = [p["id"] for p in await create_personas(gateway, template_id, 1)]
    body = {"template_id": template_id, "persona_ids": ids, "mode_mapping": {ids[0]: "assess_mode"}}
    publish = memory_log.publish

    async def unconfirmed(event, **kwargs):
        if isinstance(event, JobRequested):
            await publish(event, **kwargs)  # stored, but its acknowledgement never comes back
            raise NatsTimeout
        return await publish(event, **kwargs)

    monkeypatch.setattr(memory_log, "publish", unconfirmed)
    headers = {"Idempotency-Key": "k-1"}
    r = await gateway.post("/scenario/v2/generate-final-prompts", json=body, headers=headers)
    assert r.status_code == 503 and r.headers["retry-after"] == "5", r.text
    job_id = r.json()["ids"][0]
    assert r.json()["code"] == "job_not_confirmed" and f"job-status/{job_id}" in r.json()["detail"]
    monkeypatch.setattr(memory_log, "publish", publish)

    again = await gateway.post("/scenario/v2/generate-final-prompts", json=body, headers=headers)
    assert again.status_code == 202 and again.json()["job_id"] == job_id
    assert len(await _requested(memory_log, job_id)) == 1


def _stall_after_one_persona(memory_log, monkeypatch) -> list[str]:
    """NATS stores one persona, then stops answering (until ``monkeypatch.undo()``); the ids stored."""
    publish = memory_log.publish
    published: list[str] = []

    async def stalls_after_one(event, **kwargs):
        if isinstance(event, PersonaCreated):
            if published:
                raise NatsTimeout
            published.append(event.persona.id)
        return await publish(event, **kwargs)

    monkeypatch.setattr(memory_log, "publish", stalls_after_one)
    return published


async def test_personas_asked_for_again_with_their_idempotency_key_are_made_once(gateway, provider, memory_log,
                                                                                monkeypatch):
    template_id = await create_template(gateway, SCENARIO)
    body = {"template_id": template_id, "persona_type": "assess_mode_character", "count": 3}

    async def post(key: str, **change):
        return await gateway.post("/scenario/generate-personas", json={**body, **change},
                                  headers={"Idempotency-Key": key})

    async def template_personas() -> list[str]:
        r = await gateway.get("/scenario/personas", params={"template_id": template_id})
        return [p["id"] for p in r.json()["personas"]]

    published = _stall_after_one_persona(memory_log, monkeypatch)
    cut = await post("cast-1")
    assert cut.status_code == 503 and cut.json()["code"] == "event_log_unavailable", cut.text
    monkeypatch.undo()
    assert await template_personas() == published  # one of the three is stored

    again = await post("cast-1")
    assert again.status_code == 201, again.text
    made = again.json()["personas"]
    assert len(made) == 3 and published[0] in [p["id"] for p in made]
    assert provider.personas_asked[-1] == [p["id"] for p in made if p["id"] != published[0]]  # only those missing
    asked = len(provider.personas_asked)
    retries = await asyncio.gather(*(post("cast-1") for _ in range(3)))  # the answer lost, some at once
    assert all(r.status_code == 201 and r.json()["personas"] == made for r in retries), [r.text for r in retries]
    assert len(provider.personas_asked) == asked  # nothing more was generated
    assert sorted(await template_personas()) == sorted(p["id"] for p in made)

    for change in ({"persona_type": "try_mode_character"}, {"count": 2}, {"count": 4}):
        other = await post("cast-1", **change)
        assert other.status_code == 409 and other.json()["code"] == "idempotency_key_reused", other.text
        assert other.json()["field"] == "Idempotency-Key"
    assert len(await template_personas()) == 3 and len(provider.personas_asked) == asked
    fresh = await post("cast-2")
    assert fresh.status_code == 201 and not {p["id"] for p in fresh.json()["personas"]} & {p["id"] for p in made}
    assert len(await template_personas()) == 6
    bad = await post("no spaces")
    assert bad.status_code == 422 and bad.json()["field"] == "Idempotency-Key", bad.text
    twice = await gateway.post("/scenario/generate-personas", json=body,
                               headers=[("Idempotency-Key", "cast-1"), ("Idempotency-Key", "cast-3")])
    assert twice.status_code == 422 and twice.json()["field"] == "Idempotency-Key", twice.text
    assert len(await template_personas()) == 6 and len(provider.personas_asked) == asked + 1


async def test_keyed_personas_are_answered_from_the_log_while_the_read_model_lags(running, gateway, provider):
    template_id = await create_template(gateway, SCENARIO)
    real = provider.generate_personas
    calls: list[int] = []

    async def each_answer_new(template, persona_type, seeds):  # as an LLM: another answer every call
        calls.append(1)
        answer = await real(template, persona_type, seeds)
        return replace(answer, value=[d.model_copy(update={"name": f"{d.name} #{len(calls)}"})
                                      for d in answer.value])

    provider.generate_personas = each_answer_new
    body = {"template_id": template_id, "persona_type": "assess_mode_character", "count": 2}
    headers = {"Idempotency-Key": "lagging"}
    await running.stop_service("projector")  # the read model knows none of them
    first = await gateway.post("/scenario/generate-personas", json=body, headers=headers)
    again = await gateway.post("/scenario/generate-personas", json=body, headers=headers)
    await running.start_service("projector")
    assert first.status_code == again.status_code == 201, again.text
    assert again.json() == first.json() and len(calls) == 1  # what the log holds, made once

    async def listed():
        r = await gateway.get("/scenario/personas", params={"template_id": template_id})
        return [p["name"] for p in r.json()["personas"]] or None
    assert sorted(await eventually(listed, what="the personas projected")) == sorted(
        p["name"] for p in first.json()["personas"])


async def test_a_key_cut_short_by_a_503_is_still_refused_for_another_count(gateway, memory_log, monkeypatch):
    template_id = await create_template(gateway, SCENARIO)
    _stall_after_one_persona(memory_log, monkeypatch)
    body = {"template_id": template_id, "persona_type": "assess_mode_character", "count": 3}
    headers = {"Idempotency-Key": "cut"}
    assert (await gateway.post("/scenario/generate-personas", json=body, headers=headers)).status_code == 503
    monkeypatch.undo()
    smaller = await gateway.post("/scenario/generate-personas", json={**body, "count": 1}, headers=headers)
    assert smaller.status_code == 409 and smaller.json()["code"] == "idempotency_key_reused", smaller.text
    again = await gateway.post("/scenario/generate-personas", json=body, headers=headers)
    assert again.status_code == 201 and len(again.json()["personas"]) == 3, again.text


async def test_a_request_whose_first_persona_another_stored_first_stores_nothing_more(gateway, memory_log,
                                                                                      monkeypatch):
    """As with the same request at once on another gateway: the log keeps the other's first
    persona, so this one stores none of the rest (they would mix two generations) and says to
    ask again, which answers with what the log holds."""
    template_id = await create_template(gateway, SCENARIO)
    publish = memory_log.publish
    rivals: list[str] = []

    async def another_gateway_first(event, **kwargs):
        if isinstance(event, PersonaCreated) and not rivals:
            rival = event.persona.model_copy(update={"name": "Rival Name"})
            rivals.append(rival.id)
            await publish(event.model_copy(update={"persona": rival}), **kwargs)
        return await publish(event, **kwargs)  # stored once: the log keeps the rival's

    monkeypatch.setattr(memory_log, "publish", another_gateway_first)
    body = {"template_id": template_id, "persona_type": "assess_mode_character", "count": 3}
    headers = {"Idempotency-Key": "raced"}
    lost = await gateway.post("/scenario/generate-personas", json=body, headers=headers)
    assert lost.status_code == 409 and lost.json()["code"] == "idempotency_key_in_use", lost.text
    assert lost.headers["retry-after"] == "1"
    created = [s async for s in memory_log.read("promptgen.persona.*.created")]
    assert [s.event.persona.name for s in created] == ["Rival Name"]  # nothing of this request's stored
    again = await gateway.post("/scenario/generate-personas", json=body, headers=headers)
    assert again.status_code == 201, again.text
    assert [p["name"] for p in again.json()["personas"]][0] == "Rival Name" and len(again.json()["personas"]) == 3


async def test_requests_with_one_key_at_once_make_the_personas_once(gateway, provider):
    template_id = await create_template(gateway, SCENARIO)

    async def post(key: str, persona_type: str):
        return await gateway.post("/scenario/generate-personas", headers={"Idempotency-Key": key},
                                  json={"template_id": template_id, "persona_type": persona_type, "count": 3})

    same = await asyncio.gather(*(post("together", "assess_mode_character") for _ in range(3)))
    assert {r.status_code for r in same} == {201} and len({r.text for r in same}) == 1
    assert len(provider.personas_asked) == 1
    a, b = await asyncio.gather(post("apart", "type_a"), post("apart", "type_b"))  # one wins, as a whole
    assert sorted([a.status_code, b.status_code]) == [201, 409], [a.text, b.text]
    won = a if a.status_code == 201 else b
    r = await gateway.get("/scenario/personas", params={"template_id": template_id})
    types = [p["persona_type"] for p in r.json()["personas"]]
    assert sorted(types) == sorted(["assess_mode_character"] * 3 + [won.json()["personas"][0]["persona_type"]] * 3)
    assert (await post("apart", won.json()["personas"][0]["persona_type"])).json() == won.json()


async def test_mongodb_not_answering_is_a_503_not_a_500(gateway, memory_models, monkeypatch):
    template_id = await create_template(gateway, SCENARIO)

    async def down(*args, **kwargs):
        raise ServerSelectionTimeoutError("127.0.0.1:27017: timed out")

    monkeypatch.setattr(type(memory_models.templates), "find_one", down)  # every collection: MongoDB is down
    r = await gateway.get(f"/scenario/templates/{template_id}")
    assert r.status_code == 503 and r.headers["retry-after"] == "5", r.text
    assert r.json()["code"] == "read_models_unavailable" and "MongoDB" in r.json()["detail"]


@pytest.mark.parametrize(("code", "status"), [(189, 503), (50, 503), (11600, 503), (2, 500), (1, 500)],
                         ids=["primary-stepped-down", "time-limit", "interrupted-at-shutdown", "bad-value", "internal"])
async def test_a_mongodb_failure_for_now_is_a_503_and_any_other_a_500(gateway, memory_models, monkeypatch, code,
                                                                      status):
    """A replica set's election (a primary stepping down) answered 500, as a bug of ours would."""
    template_id = await create_template(gateway, SCENARIO)

    async def failing(*args, **kwargs):
        raise OperationFailure(f"failed with {code}", code=code)

    monkeypatch.setattr(type(memory_models.templates), "find_one", failing)
    r = await gateway.get(f"/scenario/templates/{template_id}")
    assert r.status_code == status, r.text
    if status == 503:
        assert r.headers["retry-after"] == "5" and r.json()["code"] == "read_models_unavailable", r.text
    else:
        assert r.json()["code"] == "internal_error", r.text


async def test_a_cancel_stored_before_mongodb_failed_is_answered_from_the_log(running, gateway, memory_log,
                                                                              memory_models, monkeypatch):
    """The cancel is in the log: the client is told so (202), not that nothing changed."""
    from contracts.events import JobCancelRequested

    template_id = await create_template(gateway, SCENARIO)
    ids = [p["id"] for p in await create_personas(gateway, template_id, 1)]
    running.provider.hold()
    job = (await gateway.post("/scenario/v2/generate-final-prompts", json={
        "template_id": template_id, "persona_ids": ids, "mode_mapping": {ids[0]: "learn_mode"}})).json()
    publish = memory_log.publish

    def unreachable(*args, **kwargs):
        raise ServerSelectionTimeoutError("127.0.0.1:27017: timed out")

    async def down(*args, **kwargs):
        unreachable()

    async def then_mongodb_fails(event, **kwargs):
        seq = await publish(event, **kwargs)
        if isinstance(event, JobCancelRequested):
            monkeypatch.setattr(type(memory_models.jobs), "find_one", down)
            monkeypatch.setattr(type(memory_models.jobs), "find", unreachable)  # find returns a cursor at once
        return seq

    monkeypatch.setattr(memory_log, "publish", then_mongodb_fails)
    r = await gateway.post(f"/scenario/v2/jobs/{job['job_id']}/cancel")
    assert r.status_code == 202, r.text
    assert r.json()["job_id"] == job["job_id"]
    assert [s async for s in memory_log.read(subjects.job(job["job_id"], "cancel_requested"))]
