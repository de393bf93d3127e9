"""Bad input gets a clear 4xx naming the field or ids, and publishes nothing."""

from __future__ import annotations

import pytest

from tests.flows import create_personas, create_template


@pytest.fixture
async def template_and_personas(client, scenario_document):
    template_id = await create_template(client, scenario_document)
    personas = await create_personas(client, template_id, 2)
    return template_id, [p["id"] for p in personas]


async def _stream_size(event_log) -> int:
    return await event_log.last_seq()


def _body(template_id, ids, modes=None):
    return {"template_id": template_id, "persona_ids": ids,
            "mode_mapping": modes if modes is not None else {i: "assess_mode" for i in ids}}


async def test_rejected_job_requests_name_the_problem_and_publish_nothing(client, event_log, template_and_personas,
                                                                          scenario_document):
    template_id, ids = template_and_personas
    other_template = await create_template(client, scenario_document)
    foreign = (await create_personas(client, other_template, 1))[0]["id"]
    before = await _stream_size(event_log)
    cases = [
        (_body("no-such-template", ids), 404, "template_id", "no-such-template"),
        (_body(template_id, [ids[0], "ghost-1", "ghost-2"]), 404, "persona_ids", "ghost-1, ghost-2"),
        (_body(template_id, [ids[0], foreign]), 422, "persona_ids", foreign),
        (_body(template_id, ids, {ids[0]: "assess_mode", ids[1]: "coach_mode"}), 422, "mode_mapping", "coach_mode"),
        (_body(template_id, ids, {ids[0]: "assess_mode"}), 422, "mode_mapping", ids[1]),
        (_body(template_id, []), 422, "persona_ids", "at least 1"),
        (_body(template_id, [ids[0], ids[0]]), 422, "persona_ids", "duplicated"),
        ({"template_id": template_id, "persona_ids": ids}, 422, "mode_mapping", "Field required"),
    ]
    for body, status, field, words in cases:
        r = await client.post("/scenario/v2/generate-final-prompts", json=body)
        assert r.status_code == status, (body, r.text)
        err = r.json()
        assert err["field"].startswith(field), (body, err)
        assert words in err["detail"], (body, err)
    assert await _stream_size(event_log) == before


async def test_malformed_json_is_422_naming_the_body(client):
    r = await client.post("/scenario/v2/generate-final-prompts", content=b"{not json",
                          headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["field"] == "body" and "not valid JSON" in r.json()["detail"]


async def test_too_many_personas_is_refused(system, client, template_and_personas):
    template_id, ids = template_and_personas
    system.settings.max_personas_per_job = 1
    r = await client.post("/scenario/v2/generate-final-prompts", json=_body(template_id, ids))
    assert r.status_code == 422
    assert r.json()["code"] == "too_many_personas" and "at most 1" in r.json()["detail"]


@pytest.mark.parametrize("count", [0, 21, "three"])
async def test_persona_count_out_of_range(client, template_and_personas, count):
    template_id, _ = template_and_personas
    r = await client.post("/scenario/generate-personas",
                          json={"template_id": template_id, "persona_type": "x", "count": count})
    assert r.status_code == 422 and r.json()["field"] == "count"


async def test_unknown_template_for_personas_and_reads(client):
    r = await client.post("/scenario/generate-personas",
                          json={"template_id": "missing", "persona_type": "x", "count": 1})
    assert r.status_code == 404 and r.json()["field"] == "template_id"
    assert (await client.get("/scenario/templates/missing")).status_code == 404
    assert (await client.get("/scenario/personas/missing")).status_code == 404
    assert (await client.get("/scenario/personas", params={"template_id": "missing"})).status_code == 404
    assert (await client.get("/avatar-interactions/missing")).status_code == 404


async def test_empty_scenario_document_is_refused(client):
    r = await client.post("/scenario/analyze-scenario-enhanced", json={"scenario_document": "   "})
    assert r.status_code == 422 and r.json()["field"] == "scenario_document"


async def test_interaction_with_unknown_persona_or_without_prompt_source(client):
    r = await client.post("/avatar-interactions", json={"mode": "try_mode", "persona_id": "ghost"})
    assert r.status_code == 404 and r.json()["field"] == "persona_id"
    r = await client.post("/avatar-interactions", json={"mode": "assess_mode"})
    assert r.status_code == 422 and "persona_id" in r.json()["detail"]


async def test_extra_mode_mapping_entries_are_allowed_for_retries(client, template_and_personas):
    """The seed's retry: call again with only the failed persona ids (and the same mapping)."""
    template_id, ids = template_and_personas
    r = await client.post("/scenario/v2/generate-final-prompts", json=_body(template_id, ids[:1],
                                                                            {i: "try_mode" for i in ids}))
    assert r.status_code == 202 and r.json()["persona_count"] == 1
