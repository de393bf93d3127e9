"""Readers are tolerant: a document whose free-form values a writer would refuse today (a
buggy producer's event, stored by a server that took its keys) is still read and shown, alone
or in a list, and a job can still be started for it."""

from __future__ import annotations

from tests.conftest import SCENARIO
from tests.flows import create_personas, create_template, start_job
from tests.sse_client import read_sse

ODD = {"$where": "x", "a.b": "y"}  # keys no request may hold, and MongoDB-wire servers may still store


async def test_a_stored_persona_with_keys_a_writer_refuses_is_still_read(gateway, memory_models):
    template_id = await create_template(gateway, SCENARIO)
    personas = await create_personas(gateway, template_id, 2)
    odd_id = personas[1]["id"]
    await memory_models.personas.update_one({"_id": odd_id}, {"$set": {"detail_categories": {"background": ODD}}})

    one = await gateway.get(f"/scenario/personas/{odd_id}")
    assert one.status_code == 200, one.text
    assert one.json()["detail_categories"]["background"] == ODD
    listed = await gateway.get("/scenario/personas", params={"template_id": template_id, "limit": 1000})
    assert listed.status_code == 200, listed.text
    assert {p["id"] for p in listed.json()["personas"]} == {p["id"] for p in personas}

    job = await start_job(gateway, template_id, {odd_id: "try_mode"})
    assert (await read_sse(gateway, job["sse_endpoint"])).messages[-1].data["results"]["total_personas"] == 1
