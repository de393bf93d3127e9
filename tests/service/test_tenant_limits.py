"""Cost controls per tenant: requests per minute, jobs in flight, personas per day. Past a limit
the answer is 429 naming the limit, with Retry-After, and nothing is published; another tenant
is not held back; time (a manual clock), a job's end or a new day frees the limit again.

The gateway, projector and generator run on the in-memory adapters (their own composition
roots); the counts are kept in the in-memory key-value bucket, by the same code as on NATS
(two gateways sharing them over a real server: tests/integration/test_tenant_limits.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import pytest_asyncio
from nats.js.errors import KeyNotFoundError

from contracts.events import JobRequested
from services.adapters.api_keys import SCOPES, ApiKeys
from services.gateway.auth import Caller
from services.gateway.errors import ApiError
from services.gateway.quotas import RECENT_JOBS, TenantLimits, TenantQuotas
from services.runtime.settings import Settings
from services.testing import ManualClock, MemoryEventLog, memory_read_models
from tests import samples
from tests.flows import create_personas, create_template, cycle_modes
from tests.service.conftest import ServerFreeSystem
from tests.service.providers import ScriptedProvider
from tests.sse_client import read_sse
from tests.waiting import eventually

DOCUMENT = "# Renewal\nA rep renews a contract.\n\n## Roles\n- Sales rep: the learner\n- Buyer - procurement lead"
# Yesterday's noon: recent enough that a job's documents are within their retention (its deadline
# and a week), which the in-memory read models' TTL applies as they read.
NOON = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=1)

Start = Callable[..., Awaitable[tuple[ServerFreeSystem, dict[str, httpx.AsyncClient]]]]


@pytest_asyncio.fixture
async def limited() -> AsyncIterator[Start]:
    """A secured system with the given limits, and a client per key: ``acme``, ``acme2`` (the same
    tenant, another key) and ``globex``. ``open=True``: auth off (no keys, loopback)."""
    systems: list[tuple[ServerFreeSystem, MemoryEventLog]] = []

    async def start(*, generator: bool = True, open: bool = False, **limits: int):
        settings = Settings(provider="offline", projection_wait_seconds=5, ack_wait_seconds=5, sse_ping_seconds=1,
                            generator_http_port=0, projector_http_port=0, stream_token_secret="s3cret-for-tests",
                            auth="auto" if open else "required", **limits)
        log = MemoryEventLog(settings)
        keys = {}
        if not open:
            store = await ApiKeys.open(log)
            for name, tenant in (("acme", "acme"), ("acme2", "acme"), ("globex", "globex")):
                keys[name] = (await store.create(tenant, list(SCOPES)))[1]
        system = ServerFreeSystem(settings, log, memory_read_models(), ScriptedProvider(), ManualClock(NOON))
        systems.append((system, log))
        await system.start(generator=generator)
        assert system.client is not None
        transport = system.client._transport
        clients = {name: httpx.AsyncClient(transport=transport, base_url="http://localhost", timeout=20,
                                           headers={"Authorization": f"Bearer {key}"}) for name, key in keys.items()}
        clients["open"] = system.client
        return system, clients

    yield start
    for system, log in systems:
        await system.close()
        await log.close()


def job_body(template_id: str, persona_ids: list[str]) -> dict:
    return {"template_id": template_id, "persona_ids": persona_ids, "mode_mapping": cycle_modes(persona_ids)}


async def assert_refused(system: ServerFreeSystem, r: httpx.Response, limit: str) -> int:
    """A 429 naming ``limit``, with its Retry-After in whole seconds (returned)."""
    assert r.status_code == 429, r.text
    assert r.json()["code"] == f"{limit}_exceeded" and r.json()["field"] == limit
    return int(r.headers["Retry-After"])


async def test_requests_per_minute_refuse_the_next_writing_request_until_a_slot_frees(limited) -> None:
    system, c = await limited(tenant_requests_per_minute=3)
    acme = c["acme"]
    for _ in range(3):  # a burst of the limit passes
        assert (await acme.post("/scenario/analyze-scenario-enhanced", json={"scenario_document": DOCUMENT})
                ).status_code == 201
    before = await system.event_log.last_seq()
    r = await acme.post("/scenario/analyze-scenario-enhanced", json={"scenario_document": DOCUMENT})
    assert await assert_refused(system, r, "requests_per_minute") == 20  # one slot each 60 / 3 s
    # the tenant's other key shares the count; reads do not count; nothing was published
    r = await c["acme2"].post("/avatar-interactions", json={"mode": "learn_mode"})
    await assert_refused(system, r, "requests_per_minute")
    assert (await acme.get("/scenario/v2/jobs")).status_code == 200
    assert await system.event_log.last_seq() == before
    # another tenant is not held back
    assert (await c["globex"].post("/avatar-interactions", json={"mode": "learn_mode"})).status_code == 201
    system.clock.advance(19)
    r = await acme.post("/avatar-interactions", json={"mode": "learn_mode"})
    assert await assert_refused(system, r, "requests_per_minute") == 1
    system.clock.advance(1)
    assert (await acme.post("/avatar-interactions", json={"mode": "learn_mode"})).status_code == 201


async def test_a_writing_request_counts_whatever_its_body(limited) -> None:
    """Bodies that are no JSON, or not a valid request, count as any writing request: a tenant
    cannot have the gateway parse them without end."""
    system, c = await limited(tenant_requests_per_minute=3)
    acme = c["acme"]
    for body in (b"{", b'{"scenario_document": 7}', b"[]"):
        r = await acme.post("/scenario/analyze-scenario-enhanced", content=body,
                            headers={"content-type": "application/json"})
        assert r.status_code == 422, r.text
    r = await acme.post("/scenario/analyze-scenario-enhanced", content=b"{",
                        headers={"content-type": "application/json"})
    await assert_refused(system, r, "requests_per_minute")


async def test_jobs_in_flight_hold_the_next_job_until_one_ends(limited) -> None:
    system, c = await limited(generator=False, tenant_jobs_in_flight=1)  # no generator: a job stays running
    acme = c["acme"]
    template_id = await create_template(acme, DOCUMENT)
    personas = [p["id"] for p in await create_personas(acme, template_id, 2)]
    first = await acme.post("/scenario/v2/generate-final-prompts", json=job_body(template_id, personas[:1]))
    assert first.status_code == 202, first.text
    before = await system.event_log.last_seq()
    for path, body in (("/scenario/v2/generate-final-prompts", job_body(template_id, personas[1:])),
                       ("/scenario/generate-final-prompts", job_body(template_id, personas[1:]))):  # V1 too
        r = await c["acme2"].post(path, json=body)
        assert await assert_refused(system, r, "jobs_in_flight") == 5
        assert "1 of 1 jobs running" in r.json()["detail"]
    assert await system.event_log.last_seq() == before

    job_id = first.json()["job_id"]
    assert (await acme.post(f"/scenario/v2/jobs/{job_id}/cancel")).status_code == 202

    async def admitted() -> bool:  # once the job's view says it ended, its slot is free
        r = await acme.post("/scenario/v2/generate-final-prompts", json=job_body(template_id, personas[1:]))
        assert r.status_code in (202, 429), r.text
        return r.status_code == 202

    await eventually(admitted, what="a job admitted after the running one was cancelled")


async def test_a_v1_job_nats_did_not_confirm_is_a_503_naming_it_and_keeps_its_slot(limited, monkeypatch) -> None:
    """It may run (NATS stored it, its answer lost): counted until it ends, as a V2 job is."""
    from nats.errors import TimeoutError as NatsTimeout

    system, c = await limited(generator=False, tenant_jobs_in_flight=1)
    acme = c["acme"]
    template_id = await create_template(acme, DOCUMENT)
    personas = [p["id"] for p in await create_personas(acme, template_id, 2)]
    publish = system.event_log.publish

    async def unconfirmed(event, **kwargs):
        seq = await publish(event, **kwargs)
        if isinstance(event, JobRequested):
            raise NatsTimeout  # stored, but its acknowledgement never comes back
        return seq

    monkeypatch.setattr(system.event_log, "publish", unconfirmed)
    r = await acme.post("/scenario/generate-final-prompts", json=job_body(template_id, personas[:1]))
    assert r.status_code == 503 and r.json()["code"] == "job_not_confirmed", r.text
    job_id = r.json()["ids"][0]
    assert f"job-status/{job_id}" in r.json()["detail"] and r.headers["retry-after"] == "5"
    assert "Idempotency-Key header, which names" not in r.json()["detail"]  # V1 takes none
    monkeypatch.setattr(system.event_log, "publish", publish)
    assert (await acme.get(f"/scenario/v2/job-status/{job_id}")).json()["status"] == "processing"
    r = await acme.post("/scenario/v2/generate-final-prompts", json=job_body(template_id, personas[1:]))
    await assert_refused(system, r, "jobs_in_flight")  # the job that runs holds its slot


async def test_a_job_past_its_deadline_frees_its_slot(limited) -> None:
    system, c = await limited(generator=False, tenant_jobs_in_flight=1, job_deadline_seconds=60)
    acme = c["acme"]
    template_id = await create_template(acme, DOCUMENT)
    personas = [p["id"] for p in await create_personas(acme, template_id, 2)]
    assert (await acme.post("/scenario/v2/generate-final-prompts", json=job_body(template_id, personas[:1]))
            ).status_code == 202
    r = await acme.post("/scenario/v2/generate-final-prompts", json=job_body(template_id, personas[1:]))
    await assert_refused(system, r, "jobs_in_flight")
    system.clock.advance(61)
    r = await acme.post("/scenario/v2/generate-final-prompts", json=job_body(template_id, personas[1:]))
    assert r.status_code == 202, r.text


async def test_personas_per_day_count_every_job_until_midnight_utc(limited) -> None:
    system, c = await limited(tenant_personas_per_day=3)
    acme = c["acme"]
    template_id = await create_template(acme, DOCUMENT)
    personas = [p["id"] for p in await create_personas(acme, template_id, 4)]
    assert (await acme.post("/scenario/v2/generate-final-prompts", json=job_body(template_id, personas[:2]))
            ).status_code == 202
    before = await system.event_log.last_seq()
    r = await acme.post("/scenario/v2/generate-final-prompts", json=job_body(template_id, personas[2:]))
    assert await assert_refused(system, r, "personas_per_day") == 12 * 3600  # NOON to midnight
    assert "1 left today, this job has 2" in r.json()["detail"]
    # more than a whole day allows can never pass: 422, not an invitation to wait
    r = await acme.post("/scenario/v2/generate-final-prompts", json=job_body(template_id, personas))
    assert r.status_code == 422 and r.json()["code"] == "personas_per_day_exceeded", r.text
    assert await system.event_log.last_seq() == before
    assert (await acme.post("/scenario/v2/generate-final-prompts", json=job_body(template_id, personas[2:3]))
            ).status_code == 202  # the last one fits
    system.clock.advance(12 * 3600)
    assert (await acme.post("/scenario/v2/generate-final-prompts", json=job_body(template_id, personas[2:])
                            )).status_code == 202


async def test_with_auth_off_nothing_is_limited(limited) -> None:
    system, c = await limited(open=True, tenant_requests_per_minute=1, tenant_jobs_in_flight=1,
                              tenant_personas_per_day=1, generator=False)
    client = c["open"]
    template_id = await create_template(client, DOCUMENT)
    personas = [p["id"] for p in await create_personas(client, template_id, 2)]
    for pid in personas:
        r = await client.post("/scenario/v2/generate-final-prompts", json=job_body(template_id, [pid]))
        assert r.status_code == 202, r.text


async def test_a_job_that_was_not_published_gives_its_slot_and_personas_back() -> None:
    models, log = memory_read_models(), MemoryEventLog(Settings())
    clock = ManualClock(NOON)
    quotas = await TenantQuotas.open(log, models, Settings(), clock)
    quotas.limits = TenantLimits(jobs_in_flight=1, personas_per_day=2)
    caller = Caller(tenant="acme", key_id="k1", scopes=frozenset(SCOPES))

    def job(job_id: str) -> JobRequested:  # two personas, today
        return samples.job_requested(job_id).model_copy(update={"occurred_at": NOON,
                                                               "deadline": NOON + timedelta(hours=1)})

    with pytest.raises(RuntimeError):
        async with quotas.job(caller, job("j1")):
            raise RuntimeError("the bus is gone")
    async with quotas.job(caller, job("j2")):
        pass  # the slot and both personas came back
    with pytest.raises(ApiError) as refused:
        async with quotas.job(caller, job("j3")):
            pass
    assert refused.value.status == 429 and refused.value.body.field == "jobs_in_flight"
    await log.close()


async def test_a_job_request_cut_off_while_published_stays_counted() -> None:
    """A shutdown (or a client gone) cancels the request while the log may be storing its job:
    the job may run, so its slot and personas stay counted, as when NATS does not confirm it."""
    models, log = memory_read_models(), MemoryEventLog(Settings())
    quotas = await TenantQuotas.open(log, models, Settings(), ManualClock(NOON))
    quotas.limits = TenantLimits(jobs_in_flight=1, personas_per_day=10)
    caller = Caller(tenant="acme", key_id="k1", scopes=frozenset(SCOPES))
    job = samples.job_requested("j1").model_copy(update={"occurred_at": NOON, "deadline": NOON + timedelta(hours=1)})
    with pytest.raises(asyncio.CancelledError):
        async with quotas.job(caller, job):
            raise asyncio.CancelledError  # as uvicorn cancels a request at its shutdown
    with pytest.raises(ApiError) as refused:
        async with quotas.job(caller, job.model_copy(update={"job_id": "j2"})):
            pass
    assert refused.value.status == 429 and refused.value.body.field == "jobs_in_flight"
    await log.close()


async def test_without_a_jobs_limit_the_shared_entry_keeps_only_the_latest_jobs() -> None:
    """Each job's id is kept until its deadline (so one asked for again counts once), but only the
    latest ``RECENT_JOBS``: the entry does not grow with every job."""
    models, log = memory_read_models(), MemoryEventLog(Settings())
    quotas = await TenantQuotas.open(log, models, Settings(), ManualClock(NOON))
    quotas.limits = TenantLimits(jobs_in_flight=0, personas_per_day=1000)
    caller = Caller(tenant="acme", key_id="k1", scopes=frozenset(SCOPES))
    for i in range(RECENT_JOBS + 6):
        job = samples.job_requested(f"j{i}").model_copy(update={"occurred_at": NOON,
                                                               "deadline": NOON + timedelta(hours=1)})
        async with quotas.job(caller, job):
            pass
    stored = json.loads((await quotas.kv.get("jobs.acme")).value)
    assert list(stored["jobs"]) == [f"j{i}" for i in range(6, RECENT_JOBS + 6)]
    assert stored["personas"] == 2 * (RECENT_JOBS + 6)
    await log.close()


async def test_a_tenant_given_its_own_limits_is_held_to_them_and_others_to_the_settings(limited, capsys) -> None:
    from services.cli.keys import tenant_limits

    system, c = await limited(tenant_requests_per_minute=100, tenant_jobs_in_flight=0)
    settings = system.settings
    assert await tenant_limits(settings, "acme", {"requests_per_minute": 2, "jobs_in_flight": 5},
                               event_log=system.event_log) == 0
    shown = capsys.readouterr().out
    assert shown.count("this tenant") == 2 and "the gateways' settings" in shown  # personas_per_day: not given
    for _ in range(2):
        assert (await c["acme"].post("/avatar-interactions", json={"mode": "learn_mode"})).status_code == 201
    r = await c["acme"].post("/avatar-interactions", json={"mode": "learn_mode"})
    assert await assert_refused(system, r, "requests_per_minute") == 30  # one slot each 60 / 2 s
    for _ in range(3):  # another tenant has the settings' 100
        assert (await c["globex"].post("/avatar-interactions", json={"mode": "learn_mode"})).status_code == 201

    # a bad value or name is refused, and what was set stays
    assert await tenant_limits(settings, "acme", {"jobs_in_flight": -1}, event_log=system.event_log) == 2
    assert await tenant_limits(settings, "acme", {"per_hour": 1}, event_log=system.event_log) == 2  # type: ignore[dict-item]
    assert await tenant_limits(settings, "a.b", {}, event_log=system.event_log) == 2
    capsys.readouterr()
    assert await tenant_limits(settings, "acme", {"requests_per_minute": None}, event_log=system.event_log) == 0
    shown = capsys.readouterr().out
    assert shown.count("this tenant") == 1  # jobs_in_flight only: requests per minute is the settings' again
    # showing writes nothing; a tenant no key has is pointed out (a typo)
    kv = await system.event_log.key_value("promptgen_tenant_quotas")
    assert await tenant_limits(settings, "acmee", {}, event_log=system.event_log) == 0
    assert "no key of tenant 'acmee'" in capsys.readouterr().err
    with pytest.raises(KeyNotFoundError):
        await kv.get("limits.acmee")


def test_a_broken_count_entry_is_read_as_empty_rather_than_stop_the_tenant() -> None:
    from services.gateway.quotas import TenantJobs

    assert TenantJobs.read({"jobs": ["x"], "day": 3, "personas": "many"}) == TenantJobs()
    assert TenantJobs.read({"jobs": {"j1": 5.0, "j2": "soon"}, "day": "2025-03-04", "personas": 2}) == \
        TenantJobs(jobs={"j1": 5.0}, day="2025-03-04", personas=2)


def test_a_tenants_limits_are_read_tolerantly() -> None:
    from services.gateway.quotas import with_overrides

    base = TenantLimits(120, 10, 10000)
    assert with_overrides(base, {"jobs_in_flight": 50, "personas_per_day": 0}) == TenantLimits(120, 50, 0)
    assert with_overrides(base, {"jobs_in_flight": "50", "requests_per_minute": -1, "per_hour": 3,
                                 "personas_per_day": True}) == base


async def test_a_job_ended_in_the_log_frees_its_slot_before_the_projector_has_it(limited) -> None:
    """A client that saw its job's end (sent before the projector applies it) may start the next
    job at once."""
    from contracts.events import JobCancelled
    from tests.samples import results

    system, c = await limited(generator=False, tenant_jobs_in_flight=1)
    acme = c["acme"]
    template_id = await create_template(acme, DOCUMENT)
    personas = [p["id"] for p in await create_personas(acme, template_id, 2)]
    first = await acme.post("/scenario/v2/generate-final-prompts", json=job_body(template_id, personas[:1]))
    job_id = first.json()["job_id"]
    await system.stop_service("projector")  # with the job manager: the test ends the job itself
    await system.event_log.publish(JobCancelled(job_id=job_id, results=results({personas[0]: "cancelled"})))
    r = await acme.post("/scenario/v2/generate-final-prompts", json=job_body(template_id, personas[1:]))
    assert r.status_code == 202, r.text


async def test_another_tenants_persona_or_job_is_404_before_any_wait_for_the_projector(limited, monkeypatch) -> None:
    """Its pending prompt or end must not make the 404 wait (a timing signal across tenants)."""
    from contracts.events import PersonaCompleted

    system, c = await limited(generator=False)
    template_id = await create_template(c["acme"], DOCUMENT)
    pid = (await create_personas(c["acme"], template_id, 1))[0]["id"]
    job_id = (await c["acme"].post("/scenario/v2/generate-final-prompts",
                                   json=job_body(template_id, [pid]))).json()["job_id"]

    async def job_applied():
        return await system.models.jobs.find_one({"_id": job_id})

    await eventually(job_applied, what="the job's view")
    await system.stop_service("projector")
    await system.event_log.publish(PersonaCompleted(
        job_id=job_id, persona_id=pid, persona_name="p", mode="try_mode", generation_mode="try_mode",
        prompt="You are p.", prompt_length=10, provider="offline", model="m"))
    waiter = system.app.state.gateway.waiter
    waited: list[int] = []
    wait_for = waiter.wait_for

    async def counted(seq: int) -> bool:
        waited.append(seq)
        return await wait_for(seq)

    monkeypatch.setattr(waiter, "wait_for", counted)
    assert (await c["globex"].get(f"/scenario/personas/{pid}")).status_code == 404
    assert (await c["globex"].get(f"/scenario/v2/job-status/{job_id}")).status_code == 404
    assert waited == []


async def test_a_retry_asked_many_times_at_once_is_counted_once(limited) -> None:
    """One job is stored for them all (the log's dedup): the personas of one are what is counted."""
    system, c = await limited(tenant_personas_per_day=10)
    acme = c["acme"]
    template_id = await create_template(acme, DOCUMENT)
    personas = [p["id"] for p in await create_personas(acme, template_id, 7)]
    system.provider.refuse = set(personas[:3])
    job = (await acme.post("/scenario/v2/generate-final-prompts",
                           json={"template_id": template_id, "persona_ids": personas[:3],
                                 "mode_mapping": dict.fromkeys(personas[:3], "try_mode")})).json()
    assert (await acme.get(f"/scenario/v2/job-status/{job['job_id']}")).status_code == 200
    await read_sse(acme, job["sse_endpoint"])
    system.provider.refuse = set()
    answers = await asyncio.gather(*(acme.post(f"/scenario/v2/jobs/{job['job_id']}/retry-failed") for _ in range(5)))
    assert all(a.status_code == 202 or (a.status_code == 409 and a.json()["code"] == "already_retried")
               for a in answers), [a.text for a in answers]
    assert len({a.json()["job_id"] for a in answers if a.status_code == 202}) == 1
    last = await acme.post("/scenario/v2/generate-final-prompts", json=job_body(template_id, personas[3:]))
    assert last.status_code == 202, last.text  # 3 + 3 + 4 of 10


async def _quota_state(system: ServerFreeSystem, tenant: str) -> dict:
    kv = await system.event_log.key_value("promptgen_tenant_quotas")
    return json.loads((await kv.get(f"jobs.{tenant}")).value)


async def test_one_job_asked_for_at_once_with_its_idempotency_key_holds_one_slot(limited) -> None:
    """Requests at once naming one job (an Idempotency-Key's): each answers with the job, it
    holds one slot and its personas count once, and the slot stays while it runs."""
    system, c = await limited(generator=False, tenant_jobs_in_flight=2, tenant_personas_per_day=100)
    acme = c["acme"]
    template_id = await create_template(acme, DOCUMENT)
    personas = [p["id"] for p in await create_personas(acme, template_id, 4)]
    keyed = [acme.post("/scenario/v2/generate-final-prompts", json=job_body(template_id, personas[:2]),
                       headers={"Idempotency-Key": "same"}) for _ in range(4)]
    answers = await asyncio.gather(*keyed)
    assert {r.status_code for r in answers} == {202}, [r.text for r in answers]
    assert len({r.json()["job_id"] for r in answers}) == 1
    state = await _quota_state(system, "acme")
    assert len(state["jobs"]) == 1 and state["personas"] == 2
    second = await acme.post("/scenario/v2/generate-final-prompts", json=job_body(template_id, personas[2:3]))
    assert second.status_code == 202, second.text
    third = await acme.post("/scenario/v2/generate-final-prompts", json=job_body(template_id, personas[3:]))
    await assert_refused(system, third, "jobs_in_flight")  # two run: the keyed one kept its slot


def _unconfirmed_job_requests(system: ServerFreeSystem, monkeypatch) -> Callable:
    """From now on a job's request is not confirmed by NATS (not stored; it might have been: the
    client cannot tell); returns the log's own publish, to put back."""
    from nats.errors import TimeoutError as NatsTimeout

    publish = system.event_log.publish

    async def unconfirmed(event, **kwargs):
        if isinstance(event, JobRequested):
            raise NatsTimeout
        return await publish(event, **kwargs)

    monkeypatch.setattr(system.event_log, "publish", unconfirmed)
    return publish


@pytest.mark.parametrize("jobs_in_flight", [1, 0])
async def test_a_job_nats_did_not_confirm_keeps_its_slot(limited, monkeypatch, jobs_in_flight) -> None:
    """It may run: it is counted until it ends or its deadline, and the client's resend with the
    key is that job, counted once (with a limit on personas per day, whether or not jobs in
    flight are limited)."""
    system, c = await limited(generator=False, tenant_jobs_in_flight=jobs_in_flight, tenant_personas_per_day=3)
    acme = c["acme"]
    template_id = await create_template(acme, DOCUMENT)
    personas = [p["id"] for p in await create_personas(acme, template_id, 3)]
    publish = _unconfirmed_job_requests(system, monkeypatch)
    body, key = job_body(template_id, personas[:2]), {"Idempotency-Key": "k"}
    r = await acme.post("/scenario/v2/generate-final-prompts", json=body, headers=key)
    assert r.status_code == 503 and r.json()["code"] == "job_not_confirmed", r.text
    assert (await _quota_state(system, "acme"))["personas"] == 2  # it may run: counted
    monkeypatch.setattr(system.event_log, "publish", publish)
    again = await acme.post("/scenario/v2/generate-final-prompts", json=body, headers=key)
    assert again.status_code == 202, again.text  # not refused for its own personas (2 + 2 > 3)
    assert again.json()["job_id"] == r.json()["ids"][0]
    assert (await _quota_state(system, "acme"))["personas"] == 2  # counted once
    other = await acme.post("/scenario/v2/generate-final-prompts", json=job_body(template_id, personas[2:]))
    if jobs_in_flight:
        await assert_refused(system, other, "jobs_in_flight")
    else:
        assert other.status_code == 202, other.text  # 2 + 1 of the day's 3
    assert "Idempotency-Key" in r.json()["detail"]


async def test_a_job_stored_whose_request_cannot_be_read_back_stays_counted(limited, monkeypatch) -> None:
    """The publish succeeded; reading the stored request back (whose it is) failed: it runs, so
    it is answered 202 and counted, not given back as if nothing were stored."""
    from nats.errors import TimeoutError as NatsTimeout

    system, c = await limited(generator=False, tenant_jobs_in_flight=1)
    acme = c["acme"]
    template_id = await create_template(acme, DOCUMENT)
    personas = [p["id"] for p in await create_personas(acme, template_id, 2)]

    async def unreadable(seq):
        raise NatsTimeout

    monkeypatch.setattr(system.event_log, "at", unreadable)
    r = await acme.post("/scenario/v2/generate-final-prompts", json=job_body(template_id, personas[:1]),
                        headers={"Idempotency-Key": "k2"})
    assert r.status_code == 202, r.text
    monkeypatch.undo()
    other = await acme.post("/scenario/v2/generate-final-prompts", json=job_body(template_id, personas[1:]))
    await assert_refused(system, other, "jobs_in_flight")
