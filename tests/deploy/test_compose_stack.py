"""deploy/compose.yaml, built and run here with podman, then broken on purpose mid-job.

The stack of the compose file (3 NATS nodes with an R3 stream, 2 gateways behind HAProxy,
2 generators, the projector, MongoDB-wire servers), with only the public images swapped
for local builds (deploy/local/compose.local.yaml) and the test LLM of its `mock-llm`
profile. Through the load balancer on 127.0.0.1: the seed's flow, then a job of 36 personas
during which the NATS stream leader, the gateway holding the SSE client and a generator are
killed with SIGKILL. The job must complete, every persona must have exactly one
PersonaCompleted in the log, and the SSE client, reconnecting through the load balancer with
Last-Event-ID, must have seen every message exactly once. Before that, the stack's locks: MongoDB
(the stand-in with authentication on) refuses a login without credentials or with a wrong
password, and the services' user outside promptgen's database; NATS refuses the gateway's user a
PersonaCompleted. `make test-deploy` runs it; it builds what is missing first (a cold machine:
see README, Deploy).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import pytest

from tests.conftest import SCENARIO
from tests.deploy import stack as st
from tests.flows import create_personas, create_template, cycle_modes, start_job

pytestmark = [
    pytest.mark.timeout(1800),
    pytest.mark.skipif(not os.environ.get("PROMPTGEN_DEPLOY_TEST"),
                       reason="builds images and runs deploy/compose.yaml with podman: `make test-deploy`"),
]

PERSONAS = 36
KILL_AFTER_COMPLETED = 6
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def stack():
    # A SIGTERM (a CI run stopped, a timeout) ends the test the way Ctrl-C does, so the
    # stack is still torn down; a SIGKILL leaves it to the next run (reap_stale_stacks).
    previous = signal.signal(signal.SIGTERM, _interrupt)
    start = time.monotonic()
    st.install_tools()
    st.configure_podman()
    for image, seconds in st.build_images().items():
        TIMINGS[f"build {image}"] = seconds
    TIMINGS["images (total)"] = time.monotonic() - start
    with st.running_stack(llm_latency_ms=1000, llm_concurrency=4) as s:
        start = time.monotonic()
        s.wait_healthy(timeout=300)
        TIMINGS["up until every service is healthy"] = time.monotonic() - start
        yield s
        start = time.monotonic()
    TIMINGS["teardown"] = time.monotonic() - start
    signal.signal(signal.SIGTERM, previous)
    st.log("timings: " + json.dumps({k: round(v, 1) for k, v in TIMINGS.items()}))


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@dataclass
class SseClient:
    """A browser's EventSource, over the load balancer: reconnects with Last-Event-ID after
    1 s (the stream's retry) until the server ends the stream."""

    url: str
    path: str
    messages: list[tuple[str, dict]] = field(default_factory=list)
    served_by: list[str] = field(default_factory=list)
    drops: int = 0

    async def follow(self, client: httpx.AsyncClient, on_message=None, deadline: float = 240) -> None:
        until = time.monotonic() + deadline
        while time.monotonic() < until:
            headers = {"Last-Event-ID": self.messages[-1][0]} if self.messages else {}
            try:
                # a stream kept open by keep-alives but never ending must not outlive the deadline
                remaining = until - time.monotonic()
                if await asyncio.wait_for(self._read(client, headers, on_message), remaining):
                    return
            except TimeoutError:
                break
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                self.drops += 1
                st.log(f"SSE connection lost ({exc.__class__.__name__}); reconnecting in 1 s")
            await asyncio.sleep(1)
        last = self.messages[-1][1] if self.messages else None
        raise TimeoutError(f"SSE stream did not end within {deadline}s; {len(self.messages)} messages, "
                           f"{_completed(self.messages)} personas completed, the last: {last}")

    async def _read(self, client: httpx.AsyncClient, headers: dict, on_message) -> bool:
        async with client.stream("GET", self.path, headers=headers) as resp:
            if resp.status_code == 204:  # the job had ended: nothing after Last-Event-ID
                return True
            resp.raise_for_status()
            self.served_by.append(resp.headers.get("x-served-by", "?"))
            ident, data = None, []
            async for line in resp.aiter_lines():
                if line.startswith("id:"):
                    ident = line[3:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif line == "" and data:
                    message = json.loads("\n".join(data))
                    self.messages.append((ident, message))
                    ident, data = None, []
                    if on_message is not None:
                        on_message(self, message)
            return bool(self.messages) and self.messages[-1][1]["type"] == "results"


def _completed(messages: list[tuple[str, dict]]) -> int:
    return sum(1 for _, m in messages if m["type"] == "persona_progress" and m["status"] == "completed")


async def _job_history(client: httpx.AsyncClient, job_id: str) -> list[dict]:
    """Every event of the job, page after page, through the load balancer."""
    events: list[dict] = []
    after = 0
    while True:
        resp = await client.get(f"/scenario/v2/jobs/{job_id}/events", params={"after": after, "limit": 1000})
        assert resp.status_code == 200, resp.text
        page = resp.json()
        events += page["events"]
        if page["next_after"] is None or not page["events"]:
            return events
        after = page["next_after"]


# Run in a gateway's container, with its network and secrets: MongoDB without credentials, with
# a wrong password, and with the services' own URL outside promptgen's database. Prints error
# codes only (13 Unauthorized, 18 AuthenticationFailed), never a password.
MONGO_LOGINS = """
import json, pymongo
from pymongo.errors import OperationFailure
url = open('/run/secrets/mongo_url').read().strip()
where = url.split('@', 1)[1]
def attempt(url, db):
    client = pymongo.MongoClient(url, serverSelectionTimeoutMS=10000)
    try:
        client[db].deploy_test_probe.find_one()
        return 'allowed'
    except OperationFailure as exc:
        return exc.code
    finally:
        client.close()
print(json.dumps({
    'no credentials': attempt('mongodb://' + where.split('/', 1)[0] + '/?directConnection=true', 'promptgen'),
    'wrong password': attempt('mongodb://promptgen:not-the-password@' + where, 'promptgen'),
    'mongo_url, promptgen': attempt(url, 'promptgen'),
    'mongo_url, admin': attempt(url, 'admin'),
}))
"""

# Run in a gateway's container as its NATS user (its environment and password file): a
# PersonaCompleted, which only a generator may store, is refused, and nothing is stored.
NATS_FORBIDDEN_PUBLISH = """
import asyncio, json, os, ssl, nats
SUBJECT = 'promptgen.job.deploy-test-forbidden.persona.p1.completed'
async def main():
    errors = []
    async def on_error(exc):
        errors.append(str(exc))
    user = os.environ['NATS_USER']
    nc = await nats.connect(os.environ['NATS_URL'].split(','), user=user,
                            password=open(os.environ['NATS_PASSWORD_FILE']).read().strip(),
                            tls=ssl.create_default_context(cafile=os.environ['NATS_TLS_CA_FILE']),
                            inbox_prefix='_INBOX.' + user, error_cb=on_error, allow_reconnect=False)
    js = nc.jetstream(timeout=5)
    async def stored():
        info = await js.stream_info('PROMPTGEN', subjects_filter=SUBJECT)
        return (info.state.subjects or {}).get(SUBJECT, 0)
    before = await stored()
    try:
        await js.publish(SUBJECT, b'{}', timeout=3)
        publish = 'acked'
    except nats.errors.TimeoutError:
        publish = 'no ack'
    for _ in range(50):
        if errors:
            break
        await asyncio.sleep(0.1)
    after = await stored()
    await nc.close()
    print(json.dumps({'user': user, 'publish': publish, 'errors': errors, 'stored': [before, after]}))
asyncio.run(main())
"""


async def test_mongodb_and_nats_refuse_what_the_services_may_not_do(stack):
    s = stack
    logins = json.loads(s.exec("gateway-1", "python", "-c", MONGO_LOGINS).strip().splitlines()[-1])
    st.log(f"MongoDB logins from gateway-1: {logins}")
    assert logins == {"no credentials": 13, "wrong password": 18,
                      "mongo_url, promptgen": "allowed", "mongo_url, admin": 13}

    refused = json.loads(s.exec("gateway-1", "python", "-c", NATS_FORBIDDEN_PUBLISH).strip().splitlines()[-1])
    st.log(f"a PersonaCompleted published as the gateway: {refused}")
    assert refused["user"] == "gateway" and refused["publish"] == "no ack"
    assert any("permissions violation for publish" in e.lower() and "persona.p1.completed" in e
               for e in refused["errors"]), refused
    assert refused["stored"] == [0, 0]


def _stream_leader(s: st.Stack) -> str:
    """The NATS node leading the PROMPTGEN stream, from any node's monitoring port."""
    for node in (1, 2, 3):
        try:
            jsz = httpx.get(f"{s.monitor_url(node)}/jsz?streams=true", timeout=3).json()
        except httpx.HTTPError:
            continue
        for account in jsz.get("account_details", []):
            for stream in account.get("stream_detail", []):
                leader = stream.get("cluster", {}).get("leader")
                if stream["name"] == "PROMPTGEN" and leader:
                    return leader
    raise AssertionError("no node reports a leader for the PROMPTGEN stream")


async def test_compose_stack_survives_losing_a_nats_leader_a_gateway_and_a_generator_mid_job(stack):
    s = stack
    auth = {"Authorization": f"Bearer {s.api_key}"}
    # the SSE client is a browser's EventSource: no header, the stream token in sse_endpoint
    async with httpx.AsyncClient(base_url=s.url, timeout=60, headers=auth) as client, \
            httpx.AsyncClient(base_url=s.url, timeout=60) as browser:
        # the seed's flow, through the load balancer, with the API key the stack was set up with
        template_id = await create_template(client, SCENARIO)
        personas = []
        for _ in range(PERSONAS // 18):
            personas += await create_personas(client, template_id, 18)
        ids = [p["id"] for p in personas]
        assert len(set(ids)) == PERSONAS
        started = time.monotonic()
        job = await start_job(client, template_id, cycle_modes(ids))
        assert job["persona_count"] == PERSONAS

        killed: dict[str, str] = {}

        def break_things(sse: SseClient, _message: dict) -> None:
            if killed or _completed(sse.messages) < KILL_AFTER_COMPLETED:
                return
            killed["nats"] = _stream_leader(s)
            killed["generator"] = "generator-1"
            killed["gateway"] = sse.served_by[-1]  # the one holding this very connection
            # The NATS node first, back before the others die: podman-compose makes each
            # depends_on a hard podman dependency (--requires), and podman does not restart a
            # container that died together with one it requires (seen once in 11 runs here, and
            # 3 times in 5 with two bare containers). JetStream elects the new leader meanwhile.
            s.crash(killed["nats"])
            st.log(f"{killed['nats']} back after {s.wait_restarted(killed['nats'], timeout=30):.1f}s")
            s.crash(killed["generator"])
            s.crash(killed["gateway"])

        sse = SseClient(s.url, job["sse_endpoint"])
        assert "token=" in job["sse_endpoint"]
        await sse.follow(browser, on_message=break_things)
        TIMINGS["job (36 personas, three crashes)"] = time.monotonic() - started
        st.log(f"killed {killed}; SSE served by {sse.served_by}, {sse.drops} drop(s)")

        assert killed, "the job ended before the faults could be injected"
        assert sse.drops >= 1 and len(sse.served_by) >= 2, "the SSE client must have lived through its gateway's death"

        # the job completed, with every persona
        results = sse.messages[-1][1]["results"]
        assert results["successful"] == PERSONAS and results["failed"] == 0
        view = (await client.get(f"/scenario/v2/job-status/{job['job_id']}")).json()
        assert view["status"] == "completed" and view["completed"] == PERSONAS

        # exactly one PersonaCompleted per persona in the log, and one JobCompleted
        events = await _job_history(client, job["job_id"])
        done = Counter(e["persona_id"] for e in events if e["type"] == "persona.completed")
        assert done == Counter(ids), "each persona must have exactly one PersonaCompleted"
        assert sum(1 for e in events if e["type"] == "job.completed") == 1

        # every message exactly once: the client's pieces, joined, are the job's whole stream
        ids_seen = [ident for ident, _ in sse.messages]
        assert len(ids_seen) == len(set(ids_seen)), "a message was delivered twice"
        whole = SseClient(s.url, job["sse_endpoint"])
        await whole.follow(browser)
        assert whole.drops == 0
        assert sse.messages == whole.messages, "the resumed stream must be exactly the job's stream"

        # the prompts are on the persona documents
        for pid in ids[:3]:
            persona = (await client.get(f"/scenario/personas/{pid}")).json()
            assert persona["system_prompt"]

    # what was killed came back by its restart policy, and is healthy again
    for service in killed.values():
        s.wait_restarted(service)
    s.wait_healthy(timeout=180)
    assert _stream_leader(s) in {"nats-1", "nats-2", "nats-3"}
    # and no service was refused anything by NATS on the way (permissions.conf and the code agree)
    denied = {svc: s.logs(svc).count("nats_permission_denied")
              for svc in ("gateway-1", "gateway-2", "generator-1", "generator-2", "projector")}
    assert not any(denied.values()), denied
