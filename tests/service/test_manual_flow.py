"""The seed's Manual Test Flow through the real gateway, projector and generator, on the
in-memory event log and read models."""

from __future__ import annotations

from tests.conftest import SCENARIO
from tests.flows import create_personas, create_template, cycle_modes, start_job
from tests.sse_client import read_sse
from tests.waiting import eventually


async def test_template_personas_job_and_sse_to_results(gateway, memory_models):
    template_id = await create_template(gateway, SCENARIO)
    template = (await gateway.get(f"/scenario/templates/{template_id}")).json()
    assert template["template_data"]["title"].startswith("Delivering difficult news")
    personas = await create_personas(gateway, template_id, 3)
    ids = [p["id"] for p in personas]
    modes = {ids[0]: "learn_mode", ids[1]: "try_mode", ids[2]: "assess_mode"}

    job = await start_job(gateway, template_id, modes)
    assert job["status"] == "processing" and job["persona_count"] == 3
    stream = await read_sse(gateway, job["sse_endpoint"])
    assert stream.status == 200 and stream.headers["x-accel-buffering"] == "no"
    assert stream.retry_ms == 1000
    kinds = [m.data["type"] for m in stream.messages]
    assert kinds[0] == "status_update" and stream.messages[0].data["status"] == "processing"
    assert kinds[-2:] == ["status_update", "results"] and stream.messages[-2].data["status"] == "completed"
    for pid in ids:
        states = [m.data["status"] for m in stream.messages
                  if m.data["type"] == "persona_progress" and m.data["persona_id"] == pid]
        assert states == ["processing", "completed"]
    results = stream.messages[-1].data["results"]
    assert (results["total_personas"], results["successful"], results["failed"]) == (3, 3, 0)

    # the prompts are on the personas once results are out
    for pid in ids:
        persona = (await gateway.get(f"/scenario/personas/{pid}")).json()
        assert persona["prompt_mode"] == modes[pid]
        assert len(persona["system_prompt"]) == results["personas"][pid]["prompt_length"]
    listed = (await gateway.get("/scenario/personas", params={"template_id": template_id})).json()["personas"]
    assert sorted(p["id"] for p in listed) == sorted(ids)

    status = (await gateway.get(f"/scenario/v2/job-status/{job['job_id']}")).json()
    assert (status["status"], status["completed"], status["queued"]) == ("completed", 3, 0)
    jobs = (await gateway.get("/scenario/v2/jobs")).json()["jobs"]
    assert [(j["job_id"], j["completed"], j["template_title"]) for j in jobs] == [
        (job["job_id"], 3, template["template_data"]["title"])]
    events = (await gateway.get(f"/scenario/v2/jobs/{job['job_id']}/events")).json()["events"]
    assert events[0]["type"] == "job.requested" and events[-1]["type"] == "job.completed"


async def test_job_status_polling_follows_the_job_to_its_end(gateway):
    template_id = await create_template(gateway, SCENARIO)
    personas = await create_personas(gateway, template_id, 4)
    job = await start_job(gateway, template_id, cycle_modes([p["id"] for p in personas]))
    first = (await gateway.get(f"/scenario/v2/job-status/{job['job_id']}")).json()
    assert first["total_personas"] == 4  # found at once, from the log if the projector lags

    async def finished():
        view = (await gateway.get(f"/scenario/v2/job-status/{job['job_id']}")).json()
        return view if view["status"] != "processing" else None

    view = await eventually(finished, timeout=10, what="the job's end in job-status")
    assert view["status"] == "completed" and view["completed"] == 4 and view["results"]["successful"] == 4
    assert view["usage"]["completion_tokens"] > 0


async def test_sse_resumes_after_any_message_and_ends_for_good(gateway):
    template_id = await create_template(gateway, SCENARIO)
    personas = await create_personas(gateway, template_id, 3)
    job = await start_job(gateway, template_id, cycle_modes([p["id"] for p in personas]))
    full = await read_sse(gateway, job["sse_endpoint"])
    for cut in range(1, len(full.messages)):
        rest = await read_sse(gateway, job["sse_endpoint"], headers={"Last-Event-ID": full.messages[cut - 1].id})
        assert [(m.id, m.data) for m in rest.messages] == [(m.id, m.data) for m in full.messages[cut:]]
    ended = await read_sse(gateway, job["sse_endpoint"], headers={"Last-Event-ID": full.messages[-1].id})
    assert ended.status == 204  # a browser stops reconnecting
    end_seq = int(full.messages[-1].id)
    for past in (f"{end_seq}-1", f"{end_seq + 5}", f"{end_seq + 5}-0"):  # ids past the end, never given
        assert (await read_sse(gateway, job["sse_endpoint"], headers={"Last-Event-ID": past})).status == 204, past
    assert (await gateway.get("/scenario/v2/prompt-generation-status/nope")).status_code == 404


async def test_avatar_interaction_and_the_deprecated_v1_endpoint(gateway):
    template_id = await create_template(gateway, SCENARIO)
    personas = await create_personas(gateway, template_id, 2)
    modes = cycle_modes([p["id"] for p in personas])
    r = await gateway.post("/scenario/generate-final-prompts",
                           json={"template_id": template_id, "persona_ids": list(modes), "mode_mapping": modes})
    assert r.status_code == 200 and r.headers["deprecation"] == "true"
    assert r.json()["successful"] == 2
    r = await gateway.post("/avatar-interactions", json={"mode": "try_mode", "avatars": ["a1"], "languages": ["en"],
                                                         "persona_id": personas[1]["id"]})
    assert r.status_code == 201, r.text
    got = (await gateway.get(f"/avatar-interactions/{r.json()['id']}")).json()
    prompt = (await gateway.get(f"/scenario/personas/{personas[1]['id']}")).json()["system_prompt"]
    assert got["effective_system_prompt"] == prompt and got["prompt_source"] == "persona"
    # a prompt of nothing that shows is none (learn mode takes one, or none)
    r = await gateway.post("/avatar-interactions", json={"mode": "learn_mode", "avatars": ["a1"], "languages": ["en"],
                                                         "system_prompt": "\u200b "})
    assert r.status_code == 201 and r.json()["prompt_source"] == "none", r.text
    assert r.json()["effective_system_prompt"] is None


async def test_parked_events_admin_reaches_the_running_consumers(gateway):
    assert (await gateway.get("/admin/parked")).json() == {"parked": []}
    r = await gateway.post("/admin/parked/reapply", json={"consumer": "projector"})
    assert r.status_code == 200 and r.json()["reapplied"] == []
    # a name no consumer has is the request's fault, not one to try again in a while
    r = await gateway.post("/admin/parked/reapply", json={"consumer": "projecter"})
    assert r.status_code == 422 and r.json()["field"] == "consumer" and "job-manager" in r.json()["detail"], r.text
    # (one that is not running: 503, on a real NATS in tests/integration/test_poison_events.py)
