"""Who may do what: every route of the gateway (``app.routes``: a new one fails here until it is
classified) against no key, a revoked key, another tenant's key, a key without the scope, and
for SSE expired or foreign stream tokens. A refused request publishes nothing and changes nothing.

The gateway, projector and generator run on the in-memory adapters (their own composition
roots): authorization is the gateway's alone, and the key store is the same code over the
in-memory key-value bucket."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest_asyncio
from starlette.routing import Mount

from services.adapters.api_keys import SCOPES, ApiKeys
from services.gateway.app import create_app
from services.runtime.settings import Settings
from services.testing import ManualClock, MemoryEventLog, memory_read_models
from tests.flows import create_personas, create_template, cycle_modes, start_job
from tests.service.conftest import ServerFreeSystem
from tests.service.providers import ScriptedProvider
from tests.sse_client import read_sse

DOCUMENT = "# Renewal\nA rep renews a contract.\n\n## Roles\n- Sales rep: the learner\n- Buyer - procurement lead"

# Open to anyone: operations and documentation. Everything else needs a key.
PUBLIC = {"/healthz", "/livez", "/readyz", "/metrics", "/asyncapi.json", "/docs", "/docs/oauth2-redirect",
          "/redoc", "/openapi.json", "/", "/docs/assets/{name}"}

# (method, path) -> the scope it needs
SCOPE = {
    ("POST", "/scenario/analyze-scenario-enhanced"): "scenarios:write",
    ("POST", "/scenario/generate-personas"): "scenarios:write",
    ("GET", "/scenario/templates/{template_id}"): "jobs:read",
    ("GET", "/scenario/personas/{persona_id}"): "jobs:read",
    ("GET", "/scenario/personas"): "jobs:read",
    ("POST", "/scenario/v2/generate-final-prompts"): "jobs:write",
    ("GET", "/scenario/v2/prompt-generation-status/{job_id}"): "jobs:read",
    ("GET", "/scenario/v2/job-status/{job_id}"): "jobs:read",
    ("GET", "/scenario/v2/jobs"): "jobs:read",
    ("GET", "/scenario/v2/jobs/{job_id}/events"): "jobs:read",
    ("POST", "/scenario/v2/jobs/{job_id}/cancel"): "jobs:write",
    ("POST", "/scenario/v2/jobs/{job_id}/retry-failed"): "jobs:write",
    ("POST", "/scenario/generate-final-prompts"): "jobs:write",
    ("POST", "/avatar-interactions"): "scenarios:write",
    ("GET", "/avatar-interactions/{interaction_id}"): "jobs:read",
    ("GET", "/admin/parked"): "admin",
    ("POST", "/admin/parked/reapply"): "admin",
    ("POST", "/admin/parked/discard"): "admin",
}

# Any valid key, whatever its scopes
ANY_KEY = {("GET", "/auth/whoami")}


class World:
    """A secured system with tenant ``acme``'s template, personas, finished job and interaction."""

    system: ServerFreeSystem
    keys: dict[str, str]
    ids: dict[str, str]
    sse_endpoint: str


@pytest_asyncio.fixture
async def world():
    settings = Settings(provider="offline", projection_wait_seconds=5, ack_wait_seconds=5, sse_ping_seconds=1,
                        auth="required", stream_token_secret="s3cret-for-tests", stream_token_ttl_seconds=60,
                        generator_http_port=0, projector_http_port=0)
    log, clock = MemoryEventLog(settings), ManualClock()
    store = await ApiKeys.open(log)
    keys = {}
    for name, tenant, scopes in [("acme", "acme", list(SCOPES)), ("acme_reader", "acme", ["jobs:read"]),
                                 ("other", "globex", list(SCOPES)), ("revoked", "acme", list(SCOPES))]:
        record, keys[name] = await store.create(tenant, scopes)
        if name == "revoked":
            await store.revoke(record.id)
    system = ServerFreeSystem(settings, log, memory_read_models(), ScriptedProvider(), clock)
    await system.start()
    assert system.client is not None
    system.client.headers["Authorization"] = f"Bearer {keys['acme']}"
    w = World()
    w.system, w.keys = system, keys
    template_id = await create_template(system.client, DOCUMENT)
    personas = [p["id"] for p in await create_personas(system.client, template_id, 2)]
    job = await start_job(system.client, template_id, cycle_modes(personas))
    stream = await read_sse(system.client, job["sse_endpoint"])  # to its end
    assert stream.status == 200
    r = await system.client.post("/avatar-interactions", json={"mode": "try_mode", "avatars": ["a"],
                                                                "languages": ["en"], "persona_id": personas[0]})
    assert r.status_code == 201, r.text
    w.ids = {"template_id": template_id, "persona_id": personas[0], "job_id": job["job_id"],
             "interaction_id": r.json()["id"]}
    w.sse_endpoint = job["sse_endpoint"]
    del system.client.headers["Authorization"]
    yield w
    await system.close()
    await log.close()


def _every_route(routes: list[Any]) -> Iterator[Any]:
    """Each route with a path and methods, through included routers (FastAPI keeps them nested)."""
    for route in routes:
        if hasattr(route, "effective_candidates"):
            yield from _every_route(route.effective_candidates())
        elif isinstance(route, Mount):
            assert route.path == "/static", route.path  # files, no code
        else:
            yield route


def _requests(w: World) -> list[tuple[str, str, str, dict[str, Any] | None]]:
    """Every guarded route as a request naming acme's things: (method, route path, url, body)."""
    app = create_app(w.system.settings)  # the same factory, so the same routes
    persona, template = w.ids["persona_id"], w.ids["template_id"]
    job_body = {"template_id": template, "persona_ids": [persona], "mode_mapping": {persona: "try_mode"}}
    bodies: dict[str, dict[str, Any]] = {
        "/scenario/analyze-scenario-enhanced": {"scenario_document": DOCUMENT},
        "/scenario/generate-personas": {"template_id": template, "persona_type": "x", "count": 1},
        "/scenario/v2/generate-final-prompts": job_body,
        "/scenario/generate-final-prompts": job_body,
        "/avatar-interactions": {"mode": "try_mode", "avatars": [], "languages": [], "persona_id": persona},
        "/admin/parked/reapply": {"consumer": "projector"},
        "/admin/parked/discard": {"consumer": "projector", "seqs": [1]},
    }
    out = []
    for route in _every_route(app.routes):
        for method in set(route.methods) - {"HEAD", "OPTIONS"}:
            if route.path in PUBLIC:
                continue
            assert (method, route.path) in SCOPE.keys() | ANY_KEY, \
                f"{method} {route.path} is neither public nor given a scope here"
            url = route.path.format(**w.ids)
            if route.path == "/scenario/personas":
                url += f"?template_id={template}"
            out.append((method, route.path, url, bodies.get(route.path) if method == "POST" else None))
    assert {(m, p) for m, p, _, _ in out} == SCOPE.keys() | ANY_KEY
    return out


async def _refused(w: World, headers: dict[str, str], expect: dict[str, int] | int) -> None:
    client, log = w.system.client, w.system.event_log
    assert client is not None
    before = await log.last_seq()
    for method, path, url, body in _requests(w):
        wanted = expect if isinstance(expect, int) else expect.get(path)
        if wanted is None:
            continue
        r = await client.request(method, url, json=body, headers=headers)
        assert r.status_code == wanted, (method, path, r.status_code, r.text)
        assert r.json()["code"] in {401: "unauthenticated", 403: "missing_scope"}.get(wanted, r.json()["code"])
        assert await log.last_seq() == before, f"{method} {path} published"


async def test_no_key_is_401_everywhere_but_the_public_routes(world: World) -> None:
    await _refused(world, {}, 401)
    r = await world.system.client.get("/healthz")  # type: ignore[union-attr]
    assert r.status_code == 200


async def test_a_revoked_or_unknown_key_is_401(world: World) -> None:
    await _refused(world, {"Authorization": f"Bearer {world.keys['revoked']}"}, 401)
    await _refused(world, {"Authorization": f"Bearer {world.keys['acme']}x"}, 401)
    await _refused(world, {"Authorization": "Bearer pgk_0123456789abcdef_nope"}, 401)


async def test_a_key_without_the_scope_is_403_naming_it(world: World) -> None:
    needs_more = {path: 403 for (_, path), scope in SCOPE.items() if scope != "jobs:read"}
    await _refused(world, {"Authorization": f"Bearer {world.keys['acme_reader']}"}, needs_more)
    r = await world.system.client.post(  # type: ignore[union-attr]
        "/scenario/v2/jobs/x/cancel", headers={"Authorization": f"Bearer {world.keys['acme_reader']}"})
    assert r.json()["field"] == "jobs:write"


async def test_a_body_is_read_only_for_a_caller_who_may_send_it(world: World) -> None:
    """The key and its scope are checked before the body is read: a body that is no JSON at all
    gets 401 or 403, not the 422 that would say its parser ran (a large one, on the loop every
    tenant shares, costs tens of milliseconds)."""
    client = world.system.client
    assert client is not None
    posts = [(path, url) for method, path, url, _ in _requests(world) if method == "POST"]
    for headers, status in (({}, 401), ({"Authorization": f"Bearer {world.keys['acme_reader']}"}, 403)):
        for path, url in posts:
            r = await client.post(url, content=b"{" * 100_000, headers={"content-type": "application/json",
                                                                        **headers})
            assert r.status_code == status, (path, r.status_code, r.text)


async def test_another_tenants_ids_are_404_and_its_lists_are_its_own(world: World) -> None:
    other = {"Authorization": f"Bearer {world.keys['other']}"}
    naming_acme = {path: 404 for (_, path) in SCOPE if "{" in path or path in (
        "/scenario/personas", "/scenario/generate-personas", "/scenario/v2/generate-final-prompts",
        "/scenario/generate-final-prompts", "/avatar-interactions")}
    await _refused(world, other, naming_acme)
    client = world.system.client
    assert client is not None
    assert (await client.get("/scenario/v2/jobs", headers=other)).json()["jobs"] == []
    # the 404 says a job may be another tenant's: what was made with auth off is 'default''s
    hidden = await client.get(f"/scenario/v2/job-status/{world.ids['job_id']}", headers=other)
    assert hidden.status_code == 404 and "belongs to another tenant" in hidden.json()["detail"]
    assert "'default'" in hidden.json()["detail"]
    mine = (await client.get("/scenario/v2/jobs", headers={"Authorization": f"Bearer {world.keys['acme']}"})).json()
    assert [j["job_id"] for j in mine["jobs"]] == [world.ids["job_id"]]


async def test_the_stream_token_opens_its_job_only_while_it_lives(world: World) -> None:
    client = world.system.client
    assert client is not None
    assert "?token=" in world.sse_endpoint
    again = await read_sse(client, world.sse_endpoint)  # no header: the token alone
    assert again.status == 200 and again.messages
    last = again.messages[-1].id
    assert (await read_sse(client, world.sse_endpoint, headers={"Last-Event-ID": last})).status == 204
    token = world.sse_endpoint.split("?token=")[1]
    acme = {"Authorization": f"Bearer {world.keys['acme']}"}
    # a second job, which the first job's token must not open
    client.headers.update(acme)
    job = await start_job(client, world.ids["template_id"], {world.ids["persona_id"]: "learn_mode"})
    del client.headers["Authorization"]
    before = await world.system.event_log.last_seq()
    foreign = await client.get(f"/scenario/v2/prompt-generation-status/{job['job_id']}?token={token}")
    assert foreign.status_code == 401 and foreign.json()["code"] == "unauthenticated"
    forged = await client.get(f"{world.sse_endpoint[:-3]}abc")
    assert forged.status_code == 401
    path = world.sse_endpoint.split("?")[0]
    signature_not_ascii = token.rsplit(".", 1)[0] + ".é"  # hmac compares no such str
    for odd in ("²." + token.split(".", 1)[1], "١٢." + token.split(".", 1)[1], "..", "", signature_not_ascii,
                "9999999999.acme.é"):  # int() reads "²"
        refused = await client.get(path, params={"token": odd})
        assert refused.status_code == 401 and refused.json()["code"] == "unauthenticated", (odd, refused.text)
    # a token opens nothing else
    assert (await client.get(f"/scenario/v2/job-status/{world.ids['job_id']}?token={token}")).status_code == 401
    world.system.clock.advance(61)
    assert (await client.get(world.sse_endpoint)).status_code == 401
    assert await world.system.event_log.last_seq() == before


async def test_a_revoked_keys_stream_tokens_stop_with_it(world: World) -> None:
    """A token names the key it was issued to, which must still work: revoking a key took its
    tokens along only when they expired (an hour)."""
    client, log = world.system.client, world.system.event_log
    assert client is not None
    store = await ApiKeys.open(log)
    record, key = await store.create("acme", ["jobs:write"])  # a key that only starts jobs follows them
    async with httpx.AsyncClient(transport=client._transport, base_url=client.base_url,
                                 headers={"Authorization": f"Bearer {key}"}) as writer:
        job = await start_job(writer, world.ids["template_id"], {world.ids["persona_id"]: "learn_mode"})
    endpoint = job["sse_endpoint"]
    assert f".{record.id}." in endpoint
    assert (await read_sse(client, endpoint)).status == 200
    # another key's id in its place breaks the signature
    other = (await store.create("acme", ["jobs:read"]))[0]
    assert (await client.get(endpoint.replace(f".{record.id}.", f".{other.id}."))).status_code == 401
    await store.revoke(record.id)
    refused = await client.get(endpoint)
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"], refused.text
    # a token of the format before (no key id) is taken until it expires
    tokens = world.system.app.state.gateway.guard.tokens
    expires = int(world.system.clock().timestamp()) + 60
    before = f"{expires}.acme.{tokens._sign(job['job_id'], 'acme', expires, None)}"
    path = endpoint.split("?")[0]
    assert (await read_sse(client, f"{path}?token={before}")).status == 200


async def test_job_status_gives_a_fresh_stream_token_for_its_job(world: World) -> None:
    """A page that did not start the job (a reload, the jobs list) follows it through job status."""
    client = world.system.client
    assert client is not None
    job_id = world.ids["job_id"]
    acme = {"Authorization": f"Bearer {world.keys['acme']}"}
    world.system.clock.advance(61)  # the token of the 202 has expired
    assert (await client.get(world.sse_endpoint)).status_code == 401
    endpoint = (await client.get(f"/scenario/v2/job-status/{job_id}", headers=acme)).json()["sse_endpoint"]
    assert endpoint.startswith(f"/scenario/v2/prompt-generation-status/{job_id}?token=")
    again = await read_sse(client, endpoint)  # no header: the new token alone
    assert again.status == 200 and again.messages[-1].data["type"] == "results"


async def test_whoami_names_the_keys_tenant_and_scopes_for_any_valid_key(world: World) -> None:
    client = world.system.client
    assert client is not None
    reader = await client.get("/auth/whoami", headers={"Authorization": f"Bearer {world.keys['acme_reader']}"})
    assert reader.status_code == 200, reader.text
    body = reader.json()
    assert body["auth"] is True and body["tenant"] == "acme" and body["scopes"] == ["jobs:read"]
    assert body["key_id"] and body["key_id"] not in world.keys["acme_reader"][:4]  # an id, never the key
    assert world.keys["acme_reader"] not in reader.text
    other = await client.get("/auth/whoami", headers={"Authorization": f"Bearer {world.keys['other']}"})
    assert other.json()["tenant"] == "globex" and other.json()["scopes"] == list(SCOPES)


async def test_whoami_with_auth_off_is_the_default_tenant_with_every_scope(gateway) -> None:
    body = (await gateway.get("/auth/whoami")).json()
    assert body == {"auth": False, "tenant": "default", "key_id": None, "scopes": list(SCOPES)}
