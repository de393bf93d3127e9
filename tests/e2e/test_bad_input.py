"""Bad input gets a clear 4xx naming the field or ids, and publishes nothing."""

from __future__ import annotations

import asyncio
import functools
import json
import re
from collections.abc import Awaitable, Callable

import httpx
import pytest
from structlog.testing import capture_logs

from tests.conftest import SCENARIO, InProcessSystem
from tests.flows import create_personas, create_template, start_job
from tests.metrics_text import sample
from tests.waiting import eventually


@pytest.fixture
async def template_and_personas(client, scenario_document):
    template_id = await create_template(client, scenario_document)
    personas = await create_personas(client, template_id, 2)
    return template_id, [p["id"] for p in personas]


async def _stream_size(event_log) -> int:
    return await event_log.last_seq()


def _body(template_id, ids, modes=None):
    return {"template_id": template_id, "persona_ids": ids,
            "mode_mapping": modes if modes is not None else {i: "assess_mode" for i in ids}}


async def test_rejected_job_requests_name_the_problem_and_publish_nothing(client, event_log, template_and_personas,
                                                                          scenario_document):
    template_id, ids = template_and_personas
    other_template = await create_template(client, scenario_document)
    foreign = (await create_personas(client, other_template, 1))[0]["id"]
    before = await _stream_size(event_log)
    cases = [
        (_body("no-such-template", ids), 404, "template_id", "no-such-template"),
        (_body(template_id, [ids[0], "ghost-1", "ghost-2"]), 404, "persona_ids", "ghost-1, ghost-2"),
        (_body(template_id, [ids[0], foreign]), 422, "persona_ids", foreign),
        (_body(template_id, ids, {ids[0]: "assess_mode", ids[1]: "coach_mode"}), 422, "mode_mapping", "coach_mode"),
        (_body(template_id, ids, {ids[0]: "assess_mode"}), 422, "mode_mapping", ids[1]),
        (_body(template_id, []), 422, "persona_ids", "at least 1"),
        (_body(template_id, [ids[0], ids[0]]), 422, "persona_ids", "duplicated"),
        ({"template_id": template_id, "persona_ids": ids}, 422, "mode_mapping", "Field required"),
    ]
    for body, status, field, words in cases:
        r = await client.post("/scenario/v2/generate-final-prompts", json=body)
        assert r.status_code == status, (body, r.text)
        err = r.json()
        assert err["field"].startswith(field), (body, err)
        assert words in err["detail"], (body, err)
    assert await _stream_size(event_log) == before


async def test_malformed_json_is_422_naming_the_body(client):
    r = await client.post("/scenario/v2/generate-final-prompts", content=b"{not json",
                          headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["field"] == "body" and "not valid JSON" in r.json()["detail"]


async def test_a_key_given_twice_in_an_object_is_422_naming_it(client, event_log):
    """Of ``{"mode": "bogus", "mode": "learn_mode"}`` the last was taken (201), while a proxy or a
    firewall in front may judge the first: neither is, at any depth."""
    before = await event_log.last_seq()
    for body, key in ((b'{"mode": "bogus", "mode": "learn_mode", "avatars": ["a"]}', "mode"),
                      (b'{"mode": "learn_mode", "custom_fields": {"a": 1, "a": 2}}', "a")):
        r = await client.post("/avatar-interactions", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["field"] == "body", r.text
        assert f"the key '{key}' is given twice" in r.json()["detail"]
    assert await event_log.last_seq() == before


async def test_too_many_personas_is_refused(system, client, template_and_personas):
    template_id, ids = template_and_personas
    system.settings.max_personas_per_job = 1
    r = await client.post("/scenario/v2/generate-final-prompts", json=_body(template_id, ids))
    assert r.status_code == 422
    assert r.json()["code"] == "too_many_personas" and "at most 1" in r.json()["detail"]


@pytest.mark.parametrize("count", [0, 21, "three", "2", 2.5, True])
async def test_persona_count_out_of_range(client, template_and_personas, count):
    template_id, _ = template_and_personas
    r = await client.post("/scenario/generate-personas",
                          json={"template_id": template_id, "persona_type": "x", "count": count})
    assert r.status_code == 422 and r.json()["field"] == "count"


async def test_unknown_template_for_personas_and_reads(client):
    r = await client.post("/scenario/generate-personas",
                          json={"template_id": "missing", "persona_type": "x", "count": 1})
    assert r.status_code == 404 and r.json()["field"] == "template_id"
    assert (await client.get("/scenario/templates/missing")).status_code == 404
    assert (await client.get("/scenario/personas/missing")).status_code == 404
    assert (await client.get("/scenario/personas", params={"template_id": "missing"})).status_code == 404
    assert (await client.get("/avatar-interactions/missing")).status_code == 404


async def test_empty_scenario_document_is_refused(client):
    r = await client.post("/scenario/analyze-scenario-enhanced", json={"scenario_document": "   "})
    assert r.status_code == 422 and r.json()["field"] == "scenario_document"


async def test_interaction_with_unknown_persona_or_without_prompt_source(client):
    r = await client.post("/avatar-interactions", json={"mode": "try_mode", "persona_id": "ghost"})
    assert r.status_code == 404 and r.json()["field"] == "persona_id"
    r = await client.post("/avatar-interactions", json={"mode": "assess_mode"})
    assert r.status_code == 422 and r.json()["field"] == "persona_id" and "persona_id" in r.json()["detail"], r.text
    assert [e["field"] for e in r.json()["errors"]] == ["persona_id"]
    # a prompt that is itself invalid is that field's error alone, not a missing persona_id too
    r = await client.post("/avatar-interactions", json={"mode": "assess_mode", "system_prompt": 7})
    assert r.status_code == 422 and [e["field"] for e in r.json()["errors"]] == ["system_prompt"], r.text


async def test_extra_mode_mapping_entries_are_allowed_for_retries(client, template_and_personas):
    """The seed's retry: call again with only the failed persona ids (and the same mapping)."""
    template_id, ids = template_and_personas
    r = await client.post("/scenario/v2/generate-final-prompts", json=_body(template_id, ids[:1],
                                                                            {i: "try_mode" for i in ids}))
    assert r.status_code == 202 and r.json()["persona_count"] == 1


# --- the guarded door: what cannot be stored never gets in --------------------------------------


def _nested(depth: int) -> list:
    return functools.reduce(lambda inner, _: [inner], range(depth - 1), [1])


async def test_free_form_values_mongodb_cannot_store_are_refused_naming_the_place(client, event_log):
    before = await event_log.last_seq()
    cases = [
        # the anonymous ~420-byte request that used to stop the projector forever
        ({"avatars": _nested(220)}, "avatars.0.0.0.0.0.0", "nested deeper than 6 levels"),
        ({"avatars": [{"a\u0000b": 1}]}, "avatars.0.a\\x00b", "NUL"),
        ({"avatars": [{"$set": {"x": 1}}]}, "avatars.0.$set", "'$'"),
        ({"languages": [{"en": {"a.b": 1}}]}, 'languages.0.en["a.b"]', "'.'"),  # the key, not a path
        ({"avatars": [{"": 1}]}, 'avatars.0[""]', "empty"),
        ({"avatars": [{"k" * 129: 1}]}, "avatars.0.kkk", "at most 128 characters"),
        ({"avatars": [2**64]}, "avatars.0", "numbers must be between"),
        ({"avatars": list(range(1001))}, "avatars", "at most 1000 items"),
        ({"avatars": ["s" * 10_001]}, "avatars.0", "at most 10000 characters"),
    ]
    for fields, field, words in cases:
        r = await client.post("/avatar-interactions", json={"mode": "learn_mode", **fields})
        assert r.status_code == 422, (field, r.text)
        err = r.json()
        assert err["code"] == "invalid_request" and err["field"].startswith(field), (field, err)
        assert words in err["detail"], (field, err)
    assert await event_log.last_seq() == before
    # What can be stored still is, exactly as given.
    avatars = [{"name": "Ava", "voice": {"pitch": 1.5, "tags": ["calm", None, True]}}, "a2", _nested(5)]
    r = await client.post("/avatar-interactions", json={"mode": "learn_mode", "avatars": avatars})
    assert r.status_code == 201, r.text
    assert (await client.get(f"/avatar-interactions/{r.json()['id']}")).json()["avatars"] == avatars


@pytest.fixture
async def small_door(settings, models):
    """The whole system with a 64 KiB body limit: bodies over it stay small enough for the socket
    buffers, so the client reads the 413 instead of a reset."""
    settings.max_body_bytes = 64 * 1024
    system = await InProcessSystem(settings).start()
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as c:
        yield c
    await system.close()


async def test_a_body_over_the_limit_is_413_and_publishes_nothing(small_door, event_log):
    before = await event_log.last_seq()
    document = {"scenario_document": "# A scenario\n" + "x" * 100_000}
    r = await small_door.post("/scenario/analyze-scenario-enhanced", json=document)
    assert r.status_code == 413, r.text
    assert r.json() == {"detail": f"The request body is larger than this server accepts ({64 * 1024} bytes)",
                        "code": "body_too_large", "field": "body"}
    # An endpoint that never reads its body is refused all the same: the declared length is enough.
    r = await small_door.post("/scenario/v2/jobs/some-job/cancel", content=b"x" * 100_000)
    assert r.status_code == 413 and r.json()["code"] == "body_too_large"
    assert await event_log.last_seq() == before


async def test_a_chunked_body_over_the_limit_is_413_and_publishes_nothing(small_door, event_log):
    async def chunks():  # no Content-Length: counted as it arrives
        yield b'{"mode": "learn_mode", "avatars": ['
        for _ in range(20):
            yield b'"' + b"a" * 5000 + b'", '
        yield b'"end"]}'

    before = await event_log.last_seq()
    r = await small_door.post("/avatar-interactions", content=chunks(), headers={"content-type": "application/json"})
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert r.status_code == 413 and r.json()["code"] == "body_too_large", r.text
    assert await event_log.last_seq() == before
    r = await small_door.post("/avatar-interactions", json={"mode": "learn_mode", "avatars": ["a1"]})
    assert r.status_code == 201, r.text


async def test_bodies_that_are_not_json_we_can_store_are_422(client, event_log):
    before = await event_log.last_seq()
    cases = [
        (b'{"scenario_document": "\xff\xfe"}', "body", "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "body", "nested too deeply"),
        (b'{"scenario_document": "a' + b"1" * 5000 + b'", "x": ' + b"1" * 5000 + b"}", "body", "digits"),
        (json.dumps({"scenario_document": "# Title\nlone \ud800 surrogate"}).encode(), "scenario_document",
         "lone surrogate"),
    ]
    for content, field, words in cases:
        r = await client.post("/scenario/analyze-scenario-enhanced", content=content,
                              headers={"content-type": "application/json"})
        assert r.status_code == 422, (words, r.text[:300])
        assert r.json()["field"] == field and words in r.json()["detail"], r.json()
    assert await event_log.last_seq() == before


async def test_an_error_echoes_at_most_a_short_piece_of_the_input(client):
    r = await client.post("/scenario/generate-personas",
                          json={"template_id": "t1", "persona_type": "x", "count": "9" * 500_000})
    assert r.status_code == 422 and r.json()["field"] == "count"
    assert len(r.content) < 2000 and "…" in r.json()["detail"]
    r = await client.post("/scenario/v2/generate-final-prompts",
                          json={"template_id": "t1", "persona_ids": ["p1"], "mode_mapping": {"k." * 200_000: "x"}})
    assert r.status_code == 422 and r.json()["field"].startswith('mode_mapping["k.k.')
    assert len(r.content) < 4000


async def test_a_malformed_id_is_422_naming_it_wherever_it_is(client):
    """Ids are tokens (letters, digits, '-', '_'); a malformed one is a 422, a well-formed unknown one a 404."""
    for path, field in [("/scenario/templates/bad.id", "template_id"), ("/scenario/personas/a%20b", "persona_id"),
                        ("/scenario/v2/job-status/j%0A", "job_id"), ("/avatar-interactions/x$y", "interaction_id")]:
        r = await client.get(path)
        assert r.status_code == 422 and r.json()["field"] == field, (path, r.text)
        assert "must be an id" in r.json()["detail"]
    r = await client.get("/scenario/personas", params={"template_id": "a/b"})
    assert r.status_code == 422 and r.json()["field"] == "template_id"
    r = await client.post("/scenario/v2/generate-final-prompts",
                          json={"template_id": "t 1", "persona_ids": ["p1"], "mode_mapping": {"p1": "try_mode"}})
    assert r.status_code == 422 and r.json()["field"] == "template_id"
    r = await client.post("/avatar-interactions", json={"mode": "try_mode", "persona_id": "p.1"})
    assert r.status_code == 422 and r.json()["field"] == "persona_id"
    r = await client.post("/scenario/v2/generate-final-prompts",  # a key with a dot reads as one key
                          json={"template_id": "t1", "persona_ids": ["p1"], "mode_mapping": {"p.1": "try_mode"}})
    assert r.status_code == 422 and r.json()["field"] == 'mode_mapping["p.1"][key]', r.text



async def test_an_sse_stream_whose_request_body_is_over_the_limit_ends_and_gives_its_slot_back(settings, models):
    """A GET with a chunked body past the limit: the body is refused, so the stream cannot learn
    from it that the client left. It ends at once, and gives its slot and its place in the gauge
    back (it held them until its job ended)."""
    settings.max_body_bytes = 64 * 1024
    system = await InProcessSystem(settings).start(generator=False)  # the job stays running
    try:
        async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:
            template_id = await create_template(client, SCENARIO)
            persona = (await create_personas(client, template_id, 1))[0]
            job = await start_job(client, template_id, {persona["id"]: "learn_mode"})

            async def streams() -> float:
                return sample((await client.get("/metrics")).text, "promptgen_sse_clients")

            reader, writer = await asyncio.open_connection("127.0.0.1", system.port)
            writer.write(f"GET {job['sse_endpoint']} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         "Transfer-Encoding: chunked\r\n\r\n".encode())
            assert (await reader.readline()).startswith(b"HTTP/1.1 200")
            assert await streams() == 1
            chunk = b"x" * 4096
            for _ in range(20):  # 80 KiB: past the 64 KiB limit
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
            await eventually(lambda: _is(streams, 0), what="the stream ended and counted out", timeout=10)
            writer.close()
    finally:
        await system.close()


async def _is(value: Callable[[], Awaitable[float]], expected: float) -> bool:
    return await value() == expected


async def _raw_exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` on a new connection; everything the server answers until it closes it
    (or for 5 s)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        answer = b""
        async with asyncio.timeout(5):
            while chunk := await reader.read(65536):
                answer += chunk
        return answer
    except (TimeoutError, ConnectionResetError):
        return answer
    finally:
        writer.close()


async def test_a_request_head_over_the_limit_is_431_and_the_connection_closed(system):
    """Headers of any size were read into memory: one header of 100 MB was answered 200."""
    limit = system.settings.max_header_bytes
    one_huge = b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * (2 * limit)  # never ends
    many = b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(
        b"X-Pad-%d: %s\r\n" % (i, b"b" * 1000) for i in range(limit // 1000 + 10)) + b"\r\n"
    for request in (one_huge, many):
        answer = await _raw_exchange(system.port, request)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 431 "), answer[:300]
        assert json.loads(body) == {"detail": f"The request's line and headers are larger than this server accepts "
                                              f"({limit} bytes)", "code": "headers_too_large", "field": "headers"}


async def test_heads_under_the_limit_pass_with_bodies_of_any_allowed_size_on_one_connection(system):
    """The bound is on each request's head: not on a head and its body read together, nor on a
    connection's requests together."""
    limit = system.settings.max_header_bytes
    pad = b"X-Pad: " + b"c" * (limit * 2 // 3) + b"\r\n"  # two of them are past the limit
    body = json.dumps({"mode": "learn_mode", "avatars": ["a" * 10_000] * 25, "languages": ["l" * 10_000] * 25}).encode()
    request = (b"POST /avatar-interactions HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
               b"content-length: %d\r\n%s\r\n%s" % (len(body), pad, body))
    last = b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + pad + b"\r\n"
    answer = await _raw_exchange(system.port, request + last)  # one write: the head, its body, the next head
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert statuses == [b"201", b"200"], answer[:1500]


async def test_whitespace_around_a_header_value_is_no_part_of_it(system):
    """RFC 9110: optional whitespace around a field value. httptools kept what trails, so a
    Host of "127.0.0.1 " was refused by the allow-list (and an Idempotency-Key by its pattern)."""
    answer = await _raw_exchange(system.port, b"GET /scenario/v2/jobs HTTP/1.1\r\nHost: 127.0.0.1 \t \r\n"
                                              b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    # and an Idempotency-Key with spaces after it names the job the bare key does
    template_id = await _post_json(system.port, "/scenario/analyze-scenario-enhanced",
                                   {"scenario_document": "# A scenario\nA customer calls."}, "template_id")
    persona_id = (await _post_json(system.port, "/scenario/generate-personas",
                                   {"template_id": template_id, "persona_type": "t", "count": 1}, "personas"))[0]["id"]
    job = {"template_id": template_id, "persona_ids": [persona_id], "mode_mapping": {persona_id: "learn_mode"}}
    bare = await _post_json(system.port, "/scenario/v2/generate-final-prompts", job, "job_id", key=b"k-1")
    spaced = await _post_json(system.port, "/scenario/v2/generate-final-prompts", job, "job_id", key=b"k-1  ")
    assert spaced == bare


async def _post_json(port: int, path: str, body: dict, field: str, *, key: bytes | None = None):
    payload = json.dumps(body).encode()
    head = (b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"Connection: close\r\n" % (path.encode(), len(payload)))
    if key is not None:
        head += b"Idempotency-Key: " + key + b"\r\n"
    answer = await _raw_exchange(port, head + b"\r\n" + payload)
    status, _, rest = answer.partition(b"\r\n\r\n")
    assert status.split(b" ")[1] in (b"201", b"202"), answer[:600]
    return json.loads(rest)[field]


async def test_nothing_read_with_a_refused_head_reaches_the_app(settings, models, event_log):
    """A request pipelined after a head over the bound, in the same read, is not begun: the client
    was told the connection closes, and would send it again. (A bound of 2 KiB: the head and the
    request after it arrive in one read.)"""
    settings.max_header_bytes = 2048
    system = await InProcessSystem(settings).start()
    try:
        before = await event_log.last_seq()
        body = json.dumps({"mode": "learn_mode", "avatars": ["pipelined"]}).encode()
        refused = b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 3000 + b"\r\n\r\n"
        after = (b"POST /avatar-interactions HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                 b"content-length: %d\r\n\r\n%s" % (len(body), body))
        with capture_logs() as logs:
            answer = await _raw_exchange(system.port, refused + after)
            # a request begun is a task of the server's from the read that began it: let any end first
            assert system.server is not None
            await asyncio.gather(*system.server.server_state.tasks, return_exceptions=True)
        assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answer) == [b"431"], answer[:300]
        # the refusal's line alone: the app saw no request
        assert [(e["route"], e["status"]) for e in logs if e["event"] == "http_request"] == [("<unread>", 431)]
        assert await event_log.last_seq() == before
    finally:
        await system.close()


async def test_a_refused_head_is_answered_after_the_requests_before_it(settings, models, event_log):
    """Pipelined requests, then a head over the bound, in one read: each request before it gets its
    answer, then the 431 (the connection was closed at once, and their answers were lost)."""
    settings.max_header_bytes = 2048
    system = await InProcessSystem(settings).start()
    try:
        before = await event_log.last_seq()
        body = json.dumps({"mode": "learn_mode", "avatars": ["before the refused head"]}).encode()
        first = (b"POST /avatar-interactions HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                 b"content-length: %d\r\n\r\n%s" % (len(body), body))
        second = b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        refused = b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 3000 + b"\r\n\r\n"
        answer = await _raw_exchange(system.port, first + second + refused)
        assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answer) == [b"201", b"200", b"431"], answer[:600]
        assert await event_log.last_seq() == before + 1  # the first request's interaction, stored once
    finally:
        await system.close()


async def test_a_chunked_bodys_trailers_are_bounded_as_a_head_is(system, event_log):
    """Header lines after a chunked body's last chunk: neither head nor body, they were held
    whatever their size (200 MB answered 200)."""
    before = await event_log.last_seq()
    body = json.dumps({"mode": "learn_mode"}).encode()
    request = (b"POST /avatar-interactions HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\nX-Trailer: " % (len(body), body)
               + b"t" * (2 * system.settings.max_header_bytes) + b"\r\nConnection: close\r\n\r\n")
    answer = await _raw_exchange(system.port, request)
    assert not re.findall(rb"HTTP/1\.1 2\d\d ", answer), answer[:300]  # closed before the request completes
    assert await event_log.last_seq() == before
    # a trailer of a sensible size is no trouble
    small = (b"POST /avatar-interactions HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
             b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n%x\r\n%s\r\n0\r\nX-Trailer: ok\r\n\r\n"
             % (len(body), body))
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", await _raw_exchange(system.port, small)) == [b"201"]


async def test_a_query_parameter_given_twice_is_422_naming_it(client):
    """Read as the last one (FastAPI's way), a proxy in front reading the first would see another
    request: a persona list of another template, a stream resumed elsewhere."""
    template_id = await create_template(client, SCENARIO)
    for path, field in [(f"/scenario/personas?template_id={template_id}&template_id=other", "template_id"),
                        ("/scenario/v2/jobs?limit=5&limit=6", "limit"),
                        ("/scenario/v2/prompt-generation-status/j1?last_event_id=8&last_event_id=5",
                         "last_event_id")]:
        r = await client.get(path)
        assert r.status_code == 422, (path, r.text)
        assert r.json() == {"detail": f"The query parameter '{field}' is given more than once",
                            "code": "invalid_request", "field": field}
    # one a route does not read is ignored, as any other it does not read; the page takes any
    assert (await client.get("/scenario/v2/jobs?x=1&x=2")).status_code == 200
    assert (await client.get(f"/scenario/personas?template_id={template_id}&x=1&x=2")).status_code == 200
    page = await client.get("/?job=a&job=b")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


async def test_the_parked_events_list_names_an_unknown_consumer_as_the_reapply_does(client):
    r = await client.get("/admin/parked", params={"consumer": "nope"})  # was 200 with an empty list
    assert r.status_code == 422 and r.json()["field"] == "consumer", r.text
    assert (await client.get("/admin/parked", params={"consumer": "projector"})).json() == {"parked": []}
