"""The deprecated V1 endpoint answers with its own job's prompts, whatever else writes the personas."""

from __future__ import annotations

import asyncio

from contracts.events import PersonaCompleted
from tests.flows import create_personas, create_template, start_job
from tests.waiting import eventually


def _completed(job_id: str, persona: dict, prompt: str) -> PersonaCompleted:
    return PersonaCompleted(job_id=job_id, persona_id=persona["id"], persona_name=persona["name"], mode="learn_mode",
                            generation_mode="learn_mode", prompt=prompt, prompt_length=len(prompt),
                            provider="offline", model="m")


async def test_v1_answers_with_its_own_jobs_prompt_when_another_job_wrote_the_persona_since(
        system, client, event_log, models, scenario_document):
    await system.stop_service("generator")  # the prompts are the test's to write
    template_id = await create_template(client, scenario_document)
    shared, other = await create_personas(client, template_id, 2)
    body = {"template_id": template_id, "persona_ids": [shared["id"], other["id"]],
            "mode_mapping": {shared["id"]: "learn_mode", other["id"]: "learn_mode"}}
    v1 = asyncio.create_task(client.post("/scenario/generate-final-prompts", json=body))

    async def v1_job() -> str | None:
        jobs = (await client.get("/scenario/v2/jobs")).json()["jobs"]
        return jobs[0]["job_id"] if jobs else None

    v1_job_id = await eventually(v1_job, what="the V1 job")
    v2 = await start_job(client, template_id, {shared["id"]: "assess_mode"})

    await event_log.publish(_completed(v1_job_id, shared, "V1's prompt"))
    await event_log.publish(_completed(v2["job_id"], shared, "the other job's prompt"))  # newer: it wins the document

    async def overwritten() -> bool:
        doc = await models.personas.find_one({"_id": shared["id"]})
        return doc is not None and doc.get("system_prompt") == "the other job's prompt"

    await eventually(overwritten, what="the persona's document written by the other job")
    await event_log.publish(_completed(v1_job_id, other, "V1's other prompt"))  # V1's last: its job ends

    r = await asyncio.wait_for(v1, 30)
    assert r.status_code == 200, r.text
    prompts = {pid: p["system_prompt"] for pid, p in r.json()["personas"].items()}
    assert prompts == {shared["id"]: "V1's prompt", other["id"]: "V1's other prompt"}
