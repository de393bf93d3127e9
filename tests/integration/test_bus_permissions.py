"""The locked bus of deploy/: each service does its work under its own NATS user, over TLS,
and is refused outside its subjects.

The server is started with deploy/nats/auth.conf itself (users, permissions.conf) and
certificates and passwords made by deploy/make-secrets.sh, as compose uses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import nats
import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from pydantic import SecretStr

from contracts import subjects
from contracts.events import JobCancelRequested
from services.adapters.api_keys import ApiKeys
from services.adapters.event_log import EventLog, NatsAccess, NatsRefused, connect_nats
from services.adapters.parked import ParkedEvents
from services.adapters.read_models import mongo_client
from services.cli.keys import tenant_limits
from services.cli.rebuild import run_rebuild
from services.gateway.quotas import TenantQuotas
from services.generator.work import store_outcome
from services.projector.bootstrap import bootstrap as projector_bootstrap
from services.projector.presence import AnotherProjector, Identity, claim
from services.runtime.lifecycle import utc_now
from services.runtime.settings import Settings
from tests.conftest import InProcessSystem
from tests.flows import create_personas, create_template, cycle_modes, start_job
from tests.samples import sample
from tests.servers import NatsServer
from tests.sse_client import read_sse
from tests.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
AUTH_CONF = ROOT / "deploy" / "nats" / "auth.conf"
USERS = ("gateway", "generator", "projector", "admin")

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None,
                                reason="deploy/make-secrets.sh needs openssl to make the certificates")


@pytest.fixture
def secrets_dir(tmp_path) -> Path:
    where = tmp_path / "secrets"
    subprocess.run(["sh", str(ROOT / "deploy" / "make-secrets.sh"), str(where)], check=True,
                   capture_output=True, timeout=120)
    return where


@pytest.fixture
def locked_nats(tmp_path, secrets_dir) -> NatsServer:
    data = tmp_path / "nats"
    data.mkdir()
    # nats-server resolves an include relative to the including file, never an absolute path
    extra = (f'tls {{\n  cert_file: "{secrets_dir / "nats-server.pem"}"\n'
             f'  key_file: "{secrets_dir / "nats-server-key.pem"}"\n}}\n'
             f'include "{os.path.relpath(AUTH_CONF, data)}"\n')
    env = {f"PROMPTGEN_NATS_{user.upper()}_PASSWORD": (secrets_dir / f"nats_{user}_password").read_text()
           for user in USERS}
    server = NatsServer(data, extra_config=extra, env=env).start()
    yield server
    server.stop()


@pytest.fixture
def base_settings(locked_nats, mongo_server_url) -> Settings:
    return Settings(
        nats_url=f"tls://127.0.0.1:{locked_nats.port}",
        mongo_url=mongo_server_url,
        mongo_db=f"test_{uuid.uuid4().hex[:12]}",
        provider="offline",
        projection_wait_seconds=10,
        ack_wait_seconds=5,
        generator_http_port=0,
        projector_http_port=0,
    )


@pytest.fixture
def as_user(base_settings, secrets_dir):
    def settings_of(user: str, **changes) -> Settings:
        return base_settings.model_copy(update={
            "nats_user": user,
            "nats_password": SecretStr((secrets_dir / f"nats_{user}_password").read_text()),
            "nats_tls_ca_file": str(secrets_dir / "nats-ca.pem"),
            **changes,
        })
    return settings_of


class Connection:
    """A raw connection as one user, keeping the errors the server sends it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.errors: list[str] = []
        self.nc = None

    async def __aenter__(self) -> Connection:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        self.nc = await nats.connect(self.settings.nats_url, error_cb=on_error, allow_reconnect=False,
                                     **NatsAccess.from_settings(self.settings).options())
        return self

    async def __aexit__(self, *exc) -> None:
        await self.nc.close()

    def refused(self, subject: str) -> bool:
        # nats-py hands the server's error over lowercased
        return any("permissions violation" in e and f'"{subject.lower()}"' in e for e in self.errors)


@pytest.fixture
async def admin_log(as_user) -> AsyncIterator[EventLog]:
    log = await EventLog.connect(as_user("admin"), "test-admin")  # creates the stream, as the CLI would
    yield log
    await log.close()


async def test_each_service_does_its_work_under_its_own_user(as_user, admin_log, scenario_document, mock_llm):
    llm = {"provider": "openai", "openai_base_url": mock_llm.base_url, "openai_api_key": SecretStr("test-key"),
           "llm_rpm": 600_000}  # a real LLM: the shared limits' bucket is used too
    secret = SecretStr(uuid.uuid4().hex)
    # the admin makes the first API key; the gateway then reads the keys' bucket to enforce them
    keys = await ApiKeys.open(admin_log)
    _, key = await keys.create("acme", ["jobs:read", "jobs:write", "scenarios:write", "admin"])
    # and gives the tenant limits of its own, which the gateway reads
    assert await tenant_limits(as_user("admin"), "acme", {"jobs_in_flight": 2}, event_log=admin_log) == 0
    system = InProcessSystem(as_user("gateway", stream_token_secret=secret, **llm), per_service={
        "gateway": as_user("gateway", stream_token_secret=secret, **llm),
        "generator": as_user("generator", **llm),
        "projector": as_user("projector"),
    })
    await system.start()
    try:
        async with httpx.AsyncClient(base_url=system.base_url, timeout=60,
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            template_id = await create_template(client, scenario_document)
            personas = await create_personas(client, template_id, 3)
            job = await start_job(client, template_id, cycle_modes([p["id"] for p in personas]))
            stream = await read_sse(client, job["sse_endpoint"])
            results = stream.messages[-1].data["results"]
            assert results["successful"] == 3 and results["failed"] == 0
            status = (await client.get(f"/scenario/v2/job-status/{job['job_id']}")).json()
            assert status["status"] == "completed"  # the projector's fold and job end, under its user
            history = await client.get(f"/scenario/v2/jobs/{job['job_id']}/events", params={"limit": 1000})
            assert history.status_code == 200, history.text  # a page is an ephemeral pull consumer: allowed
            assert sum(e["type"] == "persona.completed" for e in history.json()["events"]) == 3
            parked = await client.get("/admin/parked")
            assert parked.status_code == 200 and parked.json() == {"parked": []}
            # garbage under the gateway's own subjects: the projector parks it, an admin key drops
            # the record through the gateway (a purge of the parked stream, under its user)
            gateway_log = await EventLog.connect(as_user("gateway"), "test-gateway")
            try:
                junk = (await gateway_log.js.publish("promptgen.template.junk.created", b"{not json")).seq
            finally:
                await gateway_log.close()

            async def junk_parked() -> bool:
                return [r["seq"] for r in (await client.get("/admin/parked")).json()["parked"]] == [junk]

            await eventually(junk_parked, what="the projector parking the garbage")
            dropped = await client.post("/admin/parked/discard", json={"consumer": "projector", "seqs": [junk]})
            assert dropped.status_code == 200 and dropped.json()["discarded"] == [junk], dropped.text
            assert (await client.get("/admin/parked")).json() == {"parked": []}
            gateway = system.server.config.app.state.gateway  # type: ignore[union-attr]
            assert (await gateway.quotas.limits_for("acme")).jobs_in_flight == 2  # read under its user

        # the admin asks the running projector to rebuild: progress comes back to the admin's inbox
        assert await run_rebuild(as_user("admin")) == 0
        # a second projector, under the projector's user, asks who runs, hears it, and refuses
        with pytest.raises(AnotherProjector):
            await asyncio.wait_for(projector_bootstrap(as_user("projector")), 30)
        # with no projector running, the admin's rebuild writes alone, and sets the garbage aside again
        await system.stop_service("projector")
        assert await run_rebuild(as_user("admin")) == 0
        assert [r.seq for r in await ParkedEvents(admin_log).list("projector")] == [junk]
    finally:
        await system.close()
        client_ = mongo_client(system.settings)
        await client_.drop_database(system.settings.mongo_db)
        await client_.close()


async def _refused_publish(conn: Connection, admin_log: EventLog, subject: str, stream: str = "PROMPTGEN") -> None:
    """A JetStream publish on ``subject`` is refused by the server, and nothing is stored."""
    before = (await admin_log.js.stream_info(stream)).state.last_seq
    with pytest.raises(NatsTimeout):  # the server drops the message: no acknowledgement ever comes
        await conn.nc.jetstream().publish(subject, b"{}", timeout=1)
    await eventually(lambda: _true(conn.refused(subject)), what=f"a permissions violation for {subject}")
    assert (await admin_log.js.stream_info(stream)).state.last_seq == before


async def _refused_request(conn: Connection, subject: str) -> None:
    with pytest.raises(NatsTimeout):  # refused before it reaches whoever listens
        await conn.nc.request(subject, b"{}", timeout=1)
    await eventually(lambda: _true(conn.refused(subject)), what=f"a permissions violation for {subject}")


async def _true(value: bool) -> bool:
    return value


async def test_each_service_is_refused_outside_its_subjects(as_user, admin_log):
    async with Connection(as_user("gateway")) as gateway, Connection(as_user("generator")) as generator, \
            Connection(as_user("projector")) as projector, Connection(as_user("admin")) as admin:
        # what each may do goes through: the refusals below are about the subject, not the connection
        assert (await gateway.nc.jetstream().publish("promptgen.job.j1.requested", b"{}")).seq == 1
        assert (await generator.nc.jetstream().publish("promptgen.job.j1.persona.p1.completed", b"{}")).seq == 2

        # `promptgen rebuild` writing alone (the admin) says who it is to a projector starting;
        # a gateway or a generator neither asks nor is told
        stop_answering = await claim(admin_log, Identity(role="rebuild"))
        try:
            # Asked until answered: in about one run of eight the server answered "no responders"
            # to the first ask, right after the subscription was flushed (cause not found). What
            # is checked is that the admin may answer and the projector may ask.
            async def answered() -> dict | None:
                with contextlib.suppress(NoRespondersError):
                    return json.loads((await projector.nc.request(subjects.PROJECTOR_PRESENCE, b"", timeout=5)).data)
                return None

            assert (await eventually(answered, what="the rebuild's answer"))["role"] == "rebuild"
        finally:
            await stop_answering()
        await _refused_request(gateway, subjects.PROJECTOR_PRESENCE)
        await _refused_request(generator, subjects.PROJECTOR_PRESENCE)

        # a gateway cannot say a persona is done, nor end a job
        await _refused_publish(gateway, admin_log, "promptgen.job.j1.persona.p1.completed")
        await _refused_publish(gateway, admin_log, "promptgen.job.j1.completed")
        # a generator cannot start a job, nor create templates
        await _refused_publish(generator, admin_log, "promptgen.job.j2.requested")
        await _refused_publish(generator, admin_log, "promptgen.template.t1.created")
        # the projector cannot publish work items or persona outcomes
        await _refused_publish(projector, admin_log, "promptgen.job.j1.persona.p2.requested")
        # an operator repairs the log, and writes no event in a service's name
        await _refused_publish(admin, admin_log, "promptgen.job.j3.requested")

        # only an admin asks for a rebuild; no service but the gateway (for an admin-scoped key)
        # asks for a re-apply
        await _refused_request(gateway, "promptgen_control.projector.rebuild")
        await _refused_request(generator, "promptgen_control.projector.reapply")
        await _refused_request(projector, "promptgen_control.generator-workers.reapply")

        # API keys are written by the admin alone; the gateway only reads them
        await ApiKeys.open(admin_log)
        await _refused_publish(gateway, admin_log, "$KV.promptgen_api_keys.k1", stream="KV_promptgen_api_keys")
        # a tenant's own limits too: the gateway counts, it does not raise its own limits
        await TenantQuotas.open(admin_log, None, as_user("admin"), utc_now)  # type: ignore[arg-type]
        await _refused_publish(gateway, admin_log, "$KV.promptgen_tenant_quotas.limits.acme",
                               stream="KV_promptgen_tenant_quotas")

        # no other service pulls the generator's work items, nor deletes its consumer
        await admin_log.work_queue("generator-workers", "promptgen.job.*.persona.*.requested",
                                   max_ack_pending=1, ack_wait=30, max_deliver=1)
        await _refused_request(gateway, "$JS.API.CONSUMER.MSG.NEXT.PROMPTGEN.generator-workers")
        await _refused_request(projector, "$JS.API.CONSUMER.DELETE.PROMPTGEN.generator-workers")

        # the projector announces its checkpoint and a gateway hears it; a gateway cannot fake one
        heard: list[bytes] = []

        async def hear(msg) -> None:
            heard.append(msg.data)

        await gateway.nc.subscribe(subjects.PROJECTOR_CHECKPOINT, cb=hear)
        await gateway.nc.flush()

        async def announced() -> bool:  # core NATS: at most once (a gateway also polls); said again until heard
            await projector.nc.publish(subjects.PROJECTOR_CHECKPOINT, b"7")
            await projector.nc.flush()
            return bool(heard)

        await eventually(announced, what="the projector's announcement heard by a gateway")
        await gateway.nc.publish(subjects.PROJECTOR_CHECKPOINT, b"8")
        await eventually(lambda: _true(gateway.refused(subjects.PROJECTOR_CHECKPOINT)), what="a refused publish")
        assert set(heard) == {b"7"}

        # nobody reads another user's replies, nor deletes the event log
        await generator.nc.subscribe("_INBOX.gateway.>")
        await eventually(lambda: _true(generator.refused("_INBOX.gateway.>")), what="a refused subscription")
        with pytest.raises(NatsTimeout):
            await gateway.nc.request("$JS.API.STREAM.DELETE.PROMPTGEN", b"", timeout=1)
        assert (await admin_log.js.stream_info("PROMPTGEN")).state.last_seq == 2


async def test_a_wrong_password_is_refused_and_not_repeated(as_user, secrets_dir):
    settings = as_user("gateway", nats_password=SecretStr("pwrong-secret-value"))
    with pytest.raises(NatsRefused) as refused:  # at once: trying again would change nothing
        await connect_nats(settings.nats_url, "test", access=NatsAccess.from_settings(settings))
    assert "authorization violation" in str(refused.value).lower() and "'gateway'" in str(refused.value)
    assert "pwrong-secret-value" not in str(refused.value)


async def test_the_generator_may_look_at_what_refused_its_outcome(as_user, admin_log):
    """An outcome refused for its job's cancel: the generator asks the stream's leader what is
    there (a replica may lag), under its own user."""
    gateway = await EventLog.connect(as_user("gateway"), "test-gateway")  # the one that stores cancels
    generator = await EventLog.connect(as_user("generator"), "test-generator")
    try:
        completed = sample("persona.completed").model_copy(update={"job_id": uuid.uuid4().hex})
        await gateway.publish(JobCancelRequested(job_id=completed.job_id))
        assert await store_outcome(generator, completed) == "cancelled"
        assert await generator.last(subjects.job(completed.job_id, "cancel_requested"), leader=True) is not None
    finally:
        await generator.close()
        await gateway.close()
