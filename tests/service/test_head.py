"""HEAD on the gateway's GET routes: the GET's status and headers, no body; a job's stream is GET only."""

from __future__ import annotations

from structlog.testing import capture_logs

from tests.conftest import SCENARIO
from tests.flows import create_personas, create_template, start_job


async def test_head_answers_as_get_without_the_body_and_the_stream_stays_get_only(gateway):
    template_id = await create_template(gateway, SCENARIO)
    personas = await create_personas(gateway, template_id, 1)
    job = await start_job(gateway, template_id, {personas[0]["id"]: "try_mode"})
    for path in ("/scenario/v2/jobs", f"/scenario/personas/{personas[0]['id']}", f"/scenario/templates/{template_id}",
                 f"/scenario/v2/job-status/{job['job_id']}", "/livez", "/openapi.json"):
        got, head = await gateway.get(path), await gateway.head(path)
        assert (head.status_code, head.content) == (got.status_code, b""), path
        assert head.headers["content-type"] == got.headers["content-type"], path
        assert head.headers["x-content-type-options"] == "nosniff"
    with capture_logs() as logs:
        await gateway.head("/scenario/v2/jobs")
    (line,) = [e for e in logs if e["event"] == "http_request"]
    assert (line["method"], line["route"], line["status"]) == ("HEAD", "/scenario/v2/jobs", 200)  # its own series
    missing = await gateway.head("/scenario/personas/no-such-persona")
    assert (missing.status_code, missing.content) == (404, b"")
    stream = await gateway.head(job["sse_endpoint"])
    assert stream.status_code == 405 and stream.headers["allow"] == "GET"
    assert (await gateway.head("/scenario/v2/generate-final-prompts")).status_code == 405  # POST only
    paths = (await gateway.get("/openapi.json")).json()["paths"]
    assert not [p for p, operations in paths.items() if "head" in operations]
