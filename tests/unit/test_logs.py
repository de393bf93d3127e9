"""One JSON format for every line: structlog's, the standard library's (uvicorn's), and the
access line written per HTTP request with its route template."""

from __future__ import annotations

import io
import json
import logging

import httpx
import pytest
import structlog
from fastapi import FastAPI

from services.gateway.access import AccessLog
from services.runtime.logs import configure_logging


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_stdlib_and_structlog_lines_share_one_json_format():
    out = io.StringIO()
    try:
        configure_logging("generator", "info", stream=out, cache=False)
        with structlog.contextvars.bound_contextvars(job_id="j1", persona_id="p1"):
            structlog.get_logger().info("persona_generated", outcome="persona.completed")
            logging.getLogger("uvicorn.error").warning("Invalid HTTP request received.")
        ours, uvicorns = _lines(out)
    finally:
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()
        logging.getLogger().handlers[:] = []
    for line in (ours, uvicorns):
        assert line["service"] == "generator" and line["job_id"] == "j1" and line["persona_id"] == "p1"
        assert {"timestamp", "level", "event", "logger"} <= set(line)
    assert uvicorns["event"] == "Invalid HTTP request received." and uvicorns["level"] == "warning"


async def test_one_access_line_per_request_by_route_template():
    app = FastAPI()

    @app.get("/jobs/{job_id}")
    async def job(job_id: str) -> dict[str, str]:
        return {"job_id": job_id}

    app.add_middleware(AccessLog)
    with structlog.testing.capture_logs() as logs:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            assert (await client.get("/jobs/abc")).status_code == 200
            assert (await client.get("/nowhere")).status_code == 404
    found, missing = [entry for entry in logs if entry["event"] == "http_request"]
    assert found["route"] == "/jobs/{job_id}" and found["status"] == 200 and found["method"] == "GET"
    assert found["duration_ms"] >= 0 and found["client"]
    assert missing["route"] == "<unmatched>" and missing["status"] == 404


def test_no_password_of_a_url_reaches_a_line_ours_or_a_librarys():
    out = io.StringIO()
    url = "mongodb://promptgen:s3cret-pw@mongo-1:27017,mongo-2:27017/promptgen?replicaSet=rs0"
    try:
        configure_logging("projector", "info", stream=out, cache=False)
        structlog.get_logger().warning("mongo_unreachable", url=url, error=f"cannot reach {url}")
        logging.getLogger("pymongo").error("connecting to %s", "nats://admin:n4ts-pw@nats-1:4222")
        lines = out.getvalue()
    finally:
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()
        logging.getLogger().handlers[:] = []
    assert "s3cret-pw" not in lines and "n4ts-pw" not in lines
    ours, pymongos = _lines(out)
    assert ours["url"] == "mongodb://promptgen:[redacted]@mongo-1:27017,mongo-2:27017/promptgen?replicaSet=rs0"
    assert pymongos["event"] == "connecting to nats://admin:[redacted]@nats-1:4222"



@pytest.mark.timeout(30)  # the pattern before took minutes on each of these
@pytest.mark.parametrize("text,redacted", [
    ("a" * 400_000 + "://x", "a" * 400_000 + "://x"),
    ("GET /p/" + "x" * 400_000 + " s://a:b@c", "GET /p/" + "x" * 400_000 + " s://a:[redacted]@c"),
])
def test_redaction_takes_a_time_in_line_with_the_text(text, redacted):
    """Every string of every log line is redacted: a client's 200 KB path once held the loop."""
    from services.runtime.redaction import redact

    assert redact(text) == redacted
