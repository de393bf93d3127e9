"""The OpenAPI document says what the gateway does: every error status with our ErrorBody, and each
message of the SSE stream."""

from __future__ import annotations

import json

import httpx
from jsonschema import Draft202012Validator

from contracts.sse import PersonaProgressMessage, ResultsMessage, StatusUpdate
from services.gateway.app import create_app
from services.runtime.settings import Settings
from tests.samples import results


def _operations(doc):
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            yield f"{method.upper()} {path}", method, operation


def test_every_error_status_is_documented_with_our_error_body():
    doc = create_app(Settings()).openapi()
    assert "HTTPValidationError" not in json.dumps(doc)
    error_body = doc["components"]["schemas"]["ErrorBody"]
    assert error_body["properties"]["errors"]["anyOf"][0]["items"] == {"$ref": "#/components/schemas/FieldError"}
    for name, method, operation in _operations(doc):
        errors = {status: r for status, r in operation["responses"].items() if status >= "400"}
        for response in errors.values():
            assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}, name
        if operation.get("parameters") or operation.get("requestBody"):
            assert "422" in errors, name
        if operation.get("parameters") and any(p["in"] == "path" for p in operation["parameters"]):
            assert "404" in errors, name
        if method == "post":
            assert "413" in errors, name
    analyze = doc["paths"]["/scenario/analyze-scenario-enhanced"]["post"]["responses"]
    assert {"502", "503", "504"} <= set(analyze) and "Retry-After" in analyze["503"]["headers"]


def test_every_writing_route_documents_the_tenant_limits_429():
    doc = create_app(Settings()).openapi()
    writing = [(name, op) for name, method, op in _operations(doc) if method == "post" and "/admin/" not in name]
    assert len(writing) == 7
    for name, operation in writing:
        assert "Retry-After" in operation["responses"]["429"]["headers"], name
    # of the reads, only those that hold a slot of the gateway's caps answer 429: a tenant past its share
    held = {name for name, method, op in _operations(doc) if method == "get" and "429" in op["responses"]}
    assert held == {"GET /scenario/v2/prompt-generation-status/{job_id}", "GET /scenario/v2/jobs/{job_id}/events"}


def test_the_job_size_the_gateway_takes_is_the_one_documented():
    doc = create_app(Settings(max_personas_per_job=7)).openapi()
    request = doc["components"]["schemas"]["GenerateFinalPromptsRequest"]["properties"]
    assert request["persona_ids"]["maxItems"] == 7 and request["mode_mapping"]["maxProperties"] == 7


def test_ids_in_paths_are_documented_as_tokens():
    doc = create_app(Settings()).openapi()
    for name, _, operation in _operations(doc):
        for parameter in operation.get("parameters", []):
            if parameter["name"] in ("template_id", "persona_id", "job_id", "interaction_id"):
                assert parameter["schema"]["pattern"] == "^[A-Za-z0-9_-]{1,128}$", name


def _resolve(doc, schema):
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].removeprefix("#/components/schemas/")]
    return schema


async def test_the_sse_stream_documents_each_message_and_the_messages_sent_fit_it():
    app = create_app(Settings())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as client:
        doc = (await client.get("/openapi.json")).json()
    stream = doc["paths"]["/scenario/v2/prompt-generation-status/{job_id}"]["get"]["responses"]["200"]["content"]
    item = stream["text/event-stream"]["itemSchema"]
    assert item["required"] == ["data", "id"] and item["properties"]["id"]["type"] == "string"
    data = item["properties"]["data"]
    assert data["contentMediaType"] == "application/json"

    union = data["contentSchema"]
    assert union["discriminator"]["propertyName"] == "type"
    by_type = {}
    for option in union["oneOf"]:
        message = _resolve(doc, option)
        assert "type" in message["required"], message["title"]
        by_type[message["properties"]["type"]["const"]] = message
    assert set(by_type) == {"status_update", "persona_progress", "results"}
    assert {"persona_id", "status"} <= set(by_type["persona_progress"]["required"])
    assert _resolve(doc, by_type["results"]["properties"]["results"])["title"] == "JobResults"

    # The messages the gateway writes (the ones of contracts.sse) validate against the document.
    validator = Draft202012Validator({**union, "components": doc["components"]})
    sent = [
        StatusUpdate(status="processing"),
        PersonaProgressMessage(persona_id="p1", status="failed", persona_name="Dr. Smith", mode="try_mode",
                               error="LLM timeout", error_code="llm_timeout"),
        ResultsMessage(results=results({"p1": "completed", "p2": "failed"})),
    ]
    for message in sent:
        errors = [e.message for e in validator.iter_errors(json.loads(message.to_json()))]
        assert errors == [], (message.type, errors)
    assert list(validator.iter_errors({"type": "persona_progress", "status": "completed"}))  # no persona_id
