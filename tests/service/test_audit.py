"""Who did it: every command event records the acting key's id and tenant (never the key), and
the events endpoint, the job's status and `promptgen replay` show them. With auth off there is
no key: nothing is recorded, as before keys."""

from __future__ import annotations

import json

from contracts.events import Owned
from services.adapters.api_keys import SCOPES, ApiKeys
from services.cli.replay import show_job_history
from services.runtime.settings import Settings
from services.testing import ManualClock, MemoryEventLog, memory_read_models
from tests.flows import create_personas, create_template
from tests.service.conftest import ServerFreeSystem
from tests.service.providers import ScriptedProvider
from tests.sse_client import read_sse

DOCUMENT = "# Renewal\nA rep renews a contract.\n\n## Roles\n- Sales rep: the learner\n- Buyer - procurement lead"
COMMANDS = {"template.created", "persona.created", "job.requested", "job.cancel_requested", "interaction.created"}


async def test_every_command_names_its_key_and_tenant_and_every_surface_shows_them(capsys, monkeypatch) -> None:
    settings = Settings(provider="offline", projection_wait_seconds=5, ack_wait_seconds=5, sse_ping_seconds=1,
                        generator_http_port=0, projector_http_port=0, auth="required",
                        stream_token_secret="s3cret-for-tests")
    log = MemoryEventLog(settings)
    record, key = await (await ApiKeys.open(log)).create("acme", list(SCOPES))
    provider = ScriptedProvider()
    system = ServerFreeSystem(settings, log, memory_read_models(), provider, ManualClock())
    await system.start()
    try:
        client = system.client
        assert client is not None
        client.headers["Authorization"] = f"Bearer {key}"
        template_id = await create_template(client, DOCUMENT)
        personas = [p["id"] for p in await create_personas(client, template_id, 2)]
        provider.refuse = {personas[1]}
        r = await client.post("/scenario/v2/generate-final-prompts", json={
            "template_id": template_id, "persona_ids": personas,
            "mode_mapping": {personas[0]: "learn_mode", personas[1]: "try_mode"}})
        first = r.json()
        assert (await read_sse(client, first["sse_endpoint"])).status == 200  # to its end
        provider.hold()  # before the retry starts: it stays running, so it can be cancelled
        retry = (await client.post(f"/scenario/v2/jobs/{first['job_id']}/retry-failed")).json()
        assert (await client.post(f"/scenario/v2/jobs/{retry['job_id']}/cancel")).status_code == 202
        provider.release()
        r = await client.post("/avatar-interactions", json={"mode": "learn_mode"})
        assert r.status_code == 201, r.text

        # the log: each command carries the key's id and tenant; the key itself is nowhere
        stored = [s async for s in log.read("promptgen.>")]
        commands = [s.event for s in stored if s.event is not None and s.event.type in COMMANDS]
        assert {e.type for e in commands} == COMMANDS
        assert all(isinstance(e, Owned) and (e.actor, e.tenant) == (record.id, "acme") for e in commands)
        assert not any(key.split("_")[-1].encode() in s.data for s in stored)

        # the events endpoint, and the job's status
        page = (await client.get(f"/scenario/v2/jobs/{retry['job_id']}/events")).json()
        by_type = {e["type"]: e for e in page["events"]}
        for command in ("job.requested", "job.cancel_requested"):
            assert (by_type[command]["actor"], by_type[command]["tenant"]) == (record.id, "acme")
        assert by_type["persona.prompt_requested"]["actor"] is None  # the system's own events: nobody's
        status = (await client.get(f"/scenario/v2/job-status/{retry['job_id']}")).json()
        assert (status["actor"], status["tenant"]) == (record.id, "acme")
        await system.models.jobs.delete_many({"_id": retry["job_id"]})  # as when its view aged out
        status = (await client.get(f"/scenario/v2/job-status/{retry['job_id']}")).json()  # from the log
        assert (status["actor"], status["tenant"]) == (record.id, "acme")

        # promptgen replay: a column in the table, fields in --json
        monkeypatch.setenv("COLUMNS", "250")
        capsys.readouterr()
        assert await show_job_history(settings, first["job_id"], as_json=False, event_log=log) == 0
        table = capsys.readouterr().out
        assert table.count(f"key {record.id} (tenant acme)") == 1 and " by " in table
        assert await show_job_history(settings, first["job_id"], as_json=True, event_log=log) == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [(x["actor"], x["tenant"]) for x in lines if x["type"] == "job.requested"] == [(record.id, "acme")]
    finally:
        await system.close()
        await log.close()


async def test_with_auth_off_no_key_is_recorded(running) -> None:
    client = running.client
    template_id = await create_template(client, DOCUMENT)
    personas = [p["id"] for p in await create_personas(client, template_id, 1)]
    job = (await client.post("/scenario/v2/generate-final-prompts", json={
        "template_id": template_id, "persona_ids": personas, "mode_mapping": {personas[0]: "learn_mode"}})).json()
    status = (await client.get(f"/scenario/v2/job-status/{job['job_id']}")).json()
    assert status["actor"] is None and status["tenant"] is None
    events = (await client.get(f"/scenario/v2/jobs/{job['job_id']}/events")).json()["events"]
    assert events and all(e["actor"] is None and e["tenant"] is None for e in events)
