"""The seed's Manual Test Flow as plain steps over HTTP."""

from __future__ import annotations

import httpx

from tests.sse_client import SseStream, read_sse


async def create_template(client: httpx.AsyncClient, document: str) -> str:
    r = await client.post("/scenario/analyze-scenario-enhanced", json={"scenario_document": document})
    assert r.status_code == 201, r.text
    return r.json()["template_id"]


async def create_personas(client: httpx.AsyncClient, template_id: str, count: int,
                          persona_type: str = "assess_mode_character") -> list[dict]:
    r = await client.post("/scenario/generate-personas",
                          json={"template_id": template_id, "persona_type": persona_type, "count": count})
    assert r.status_code == 201, r.text
    return r.json()["personas"]


async def start_job(client: httpx.AsyncClient, template_id: str, modes: dict[str, str]) -> dict:
    r = await client.post("/scenario/v2/generate-final-prompts",
                          json={"template_id": template_id, "persona_ids": list(modes), "mode_mapping": modes})
    assert r.status_code == 202, r.text
    return r.json()


def cycle_modes(persona_ids: list[str]) -> dict[str, str]:
    modes = ("learn_mode", "try_mode", "assess_mode")
    return {pid: modes[i % 3] for i, pid in enumerate(persona_ids)}


async def follow_to_end(client: httpx.AsyncClient, job: dict) -> SseStream:
    """The job's SSE stream to its end, then its view: the end is sent before the projector has
    it, and that read waits for the projector, so from here the read models hold the whole job."""
    stream = await read_sse(client, job["sse_endpoint"])
    r = await client.get(f"/scenario/v2/job-status/{job['job_id']}")
    assert r.status_code == 200 and r.json()["status"] != "processing", r.text
    return stream
