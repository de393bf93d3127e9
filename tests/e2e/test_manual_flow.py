"""The seed's Manual Test Flow over real HTTP, real NATS JetStream and a real MongoDB-wire server."""

from __future__ import annotations

import asyncio

from tests.flows import create_personas, create_template, cycle_modes, start_job
from tests.sse_client import read_sse


async def test_manual_flow_generates_and_saves_every_prompt(client, models, scenario_document):
    template_id = await create_template(client, scenario_document)
    template = (await client.get(f"/scenario/templates/{template_id}")).json()
    assert template["template_data"]["title"].startswith("Delivering difficult news")
    assert "Respond to strong emotion with empathy" in template["template_data"]["learning_objectives"]

    personas = await create_personas(client, template_id, 3)
    assert all(p["system_prompt"] is None for p in personas)
    ids = [p["id"] for p in personas]
    modes = {ids[0]: "learn_mode", ids[1]: "try_mode", ids[2]: "assess_mode"}

    job = await start_job(client, template_id, modes)
    assert job["status"] == "processing" and job["persona_count"] == 3
    assert job["message"] == "Prompt generation started"
    assert job["sse_endpoint"] == f"/scenario/v2/prompt-generation-status/{job['job_id']}"

    stream = await read_sse(client, job["sse_endpoint"])
    assert stream.status == 200
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert stream.headers["x-accel-buffering"] == "no"
    kinds = [m.data["type"] for m in stream.messages]
    assert kinds[0] == "status_update" and stream.messages[0].data["status"] == "processing"
    assert kinds[-2:] == ["status_update", "results"]
    assert all(m.event is None for m in stream.messages)  # unnamed: onmessage gets them all
    for pid in ids:
        states = [m.data["status"] for m in stream.messages
                  if m.data["type"] == "persona_progress" and m.data["persona_id"] == pid]
        assert states == ["processing", "completed"]
    results = stream.messages[-1].data["results"]
    assert results["template_id"] == template_id
    assert results["total_personas"] == 3 and results["successful"] == 3 and results["failed"] == 0
    assert results["personas"][ids[1]]["mode"] == "try_mode"
    assert results["personas"][ids[1]]["persona_name"] == personas[1]["name"]

    # Once results are out, the personas read hold the prompts (the read waits for the projector
    # to have what the stream has sent), and so do their documents.
    for pid in ids:
        view = (await client.get(f"/scenario/personas/{pid}")).json()
        assert len(view["system_prompt"]) == results["personas"][pid]["prompt_length"]
        assert view["prompt_mode"] == modes[pid]
        doc = await models.personas.find_one({"_id": pid})
        assert doc["system_prompt"] and len(doc["system_prompt"]) == results["personas"][pid]["prompt_length"]
        assert doc["prompt_mode"] == modes[pid]
        assert doc["prompt_generated_at"] is not None
    learn = await models.personas.find_one({"_id": ids[0]})
    assert "coach" in learn["system_prompt"].lower()
    # try and assess share one prompt per persona: both generated as assess_mode, no hints
    assess = await models.personas.find_one({"_id": ids[2]})
    assert "do not give hints" in assess["system_prompt"].lower()
    assert personas[2]["name"] in assess["system_prompt"]

    status = (await client.get(f"/scenario/v2/job-status/{job['job_id']}")).json()
    assert status["status"] == "completed" and status["completed"] == 3 and status["queued"] == 0
    assert status["results"]["successful"] == 3

    persona = (await client.get(f"/scenario/personas/{ids[1]}")).json()
    assert persona["prompt_mode"] == "try_mode" and persona["system_prompt"]


async def test_sse_resume_with_last_event_id_loses_nothing_and_repeats_nothing(client, scenario_document):
    template_id = await create_template(client, scenario_document)
    personas = await create_personas(client, template_id, 6)
    job = await start_job(client, template_id, cycle_modes([p["id"] for p in personas]))
    full = await read_sse(client, job["sse_endpoint"])
    assert full.messages[-1].data["type"] == "results"

    for cut in range(1, len(full.messages)):
        first = await read_sse(client, job["sse_endpoint"], stop_after=cut)
        last_id = first.messages[-1].id
        rest = await read_sse(client, job["sse_endpoint"], headers={"Last-Event-ID": last_id})
        joined = [(m.id, m.data) for m in first.messages + rest.messages]
        assert joined == [(m.id, m.data) for m in full.messages], f"cut after {cut} ({last_id})"

    # The query parameter does the same for a fresh page load.
    mid = full.messages[3].id
    rest = await read_sse(client, f"{job['sse_endpoint']}?last_event_id={mid}")
    assert [m.id for m in rest.messages] == [m.id for m in full.messages[4:]]


async def test_browsers_reconnect_within_a_second_and_stop_after_the_end(client, scenario_document):
    template_id = await create_template(client, scenario_document)
    personas = await create_personas(client, template_id, 1)
    job = await start_job(client, template_id, {personas[0]["id"]: "assess_mode"})
    full = await read_sse(client, job["sse_endpoint"])
    assert full.retry_ms == 1000  # a dropped stream is retried within a second, not the browser's 3 s
    again = await read_sse(client, job["sse_endpoint"], headers={"Last-Event-ID": full.messages[-1].id})
    assert again.status == 204
    # a late client with no id still gets the whole history
    late = await read_sse(client, job["sse_endpoint"])
    assert [m.data for m in late.messages] == [m.data for m in full.messages]


async def test_live_client_sees_progress_before_the_end(client, scenario_document):
    template_id = await create_template(client, scenario_document)
    personas = await create_personas(client, template_id, 20)
    job = await start_job(client, template_id, cycle_modes([p["id"] for p in personas]))
    stream = await read_sse(client, job["sse_endpoint"])
    completed = {m.data["persona_id"] for m in stream.messages
                 if m.data["type"] == "persona_progress" and m.data["status"] == "completed"}
    assert len(completed) == 20
    assert stream.messages[-1].data["results"]["successful"] == 20


async def test_unknown_job_is_404_everywhere(client):
    for path in ("/scenario/v2/prompt-generation-status/nope", "/scenario/v2/job-status/nope",
                 "/scenario/v2/jobs/nope/events"):
        r = await client.get(path)
        assert r.status_code == 404, path
        assert "nope" in r.json()["detail"]


async def test_job_status_right_after_start_finds_the_job(client, scenario_document):
    template_id = await create_template(client, scenario_document)
    personas = await create_personas(client, template_id, 2)
    job = await start_job(client, template_id, cycle_modes([p["id"] for p in personas]))
    r = await client.get(f"/scenario/v2/job-status/{job['job_id']}")
    assert r.status_code == 200
    assert r.json()["total_personas"] == 2


async def test_avatar_interaction_reads_its_prompt_from_the_persona(client, scenario_document):
    template_id = await create_template(client, scenario_document)
    persona = (await create_personas(client, template_id, 1))[0]
    r = await client.post("/avatar-interactions", json={"mode": "try_mode", "avatars": ["a1"], "languages": ["en"],
                                                        "persona_id": persona["id"]})
    assert r.status_code == 201, r.text
    interaction = r.json()
    assert interaction["effective_system_prompt"] is None and interaction["prompt_source"] == "none"

    job = await start_job(client, template_id, {persona["id"]: "try_mode"})
    await read_sse(client, job["sse_endpoint"])
    got = (await client.get(f"/avatar-interactions/{interaction['id']}")).json()
    prompt = (await client.get(f"/scenario/personas/{persona['id']}")).json()["system_prompt"]
    assert got["system_prompt"] is None
    assert got["effective_system_prompt"] == prompt and got["prompt_source"] == "persona"
    assert got["persona_id"] == persona["id"]

    learn = await client.post("/avatar-interactions", json={"mode": "learn_mode", "avatars": [], "languages": []})
    assert learn.status_code == 201 and learn.json()["persona_id"] is None


async def test_v1_is_synchronous_deprecated_and_built_on_v2(client, scenario_document):
    template_id = await create_template(client, scenario_document)
    personas = await create_personas(client, template_id, 2)
    modes = cycle_modes([p["id"] for p in personas])
    r = await client.post("/scenario/generate-final-prompts",
                          json={"template_id": template_id, "persona_ids": list(modes), "mode_mapping": modes})
    assert r.status_code == 200, r.text
    assert r.headers["deprecation"] == "true"
    body = r.json()
    assert body["successful"] == 2
    for pid, p in body["personas"].items():
        assert p["status"] == "completed" and p["system_prompt"] and p["mode"] == modes[pid]
    # it ran as a V2 job: the job is visible with its history
    events = (await client.get(f"/scenario/v2/jobs/{body['job_id']}/events")).json()["events"]
    assert events[0]["type"] == "job.requested" and events[-1]["type"] == "job.completed"
    openapi = (await client.get("/openapi.json")).json()
    assert openapi["paths"]["/scenario/generate-final-prompts"]["post"]["deprecated"] is True


async def test_concurrent_jobs_do_not_mix(client, scenario_document):
    template_id = await create_template(client, scenario_document)
    personas = await create_personas(client, template_id, 6)
    ids = [p["id"] for p in personas]
    jobs = await asyncio.gather(*(start_job(client, template_id, cycle_modes(ids[i::2])) for i in range(2)))
    streams = await asyncio.gather(*(read_sse(client, j["sse_endpoint"]) for j in jobs))
    for i, stream in enumerate(streams):
        seen = {m.data["persona_id"] for m in stream.messages if m.data["type"] == "persona_progress"}
        assert seen == set(ids[i::2])
        assert stream.messages[-1].data["results"]["total_personas"] == 3
