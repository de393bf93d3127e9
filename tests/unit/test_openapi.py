"""The OpenAPI document says what the gateway does: every error status with our ErrorBody."""

from __future__ import annotations

import json

from services.gateway.app import create_app
from services.runtime.settings import Settings


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
    reads = [op for _, method, op in _operations(doc) if method == "get"]
    assert not any("429" in op["responses"] for op in reads)


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
