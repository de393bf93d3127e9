"""The event log's AsyncAPI document: up to date with the contracts, and valid AsyncAPI 3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft7Validator, ValidationError, validate

from contracts.asyncapi import CHANNELS
from contracts.events import EVENT_TYPES
from services.cli.asyncapi import COMMITTED, current
from services.testing import MemoryEventLog
from tests.samples import job_requested

SPEC = Path(__file__).with_name("asyncapi-3.0.0.schema.json")


def test_the_committed_document_is_the_one_the_contracts_make():
    assert COMMITTED.read_text() == current(), "out of date: run `promptgen asyncapi` and commit the result"


def test_it_is_valid_asyncapi_3():
    errors = sorted(Draft7Validator(json.loads(SPEC.read_text())).iter_errors(json.loads(COMMITTED.read_text())),
                    key=lambda e: list(e.path))
    assert not errors, [f"{'/'.join(map(str, e.path))}: {e.message[:200]}" for e in errors[:5]]


def test_every_event_has_a_channel_and_every_parameter_is_described():
    assert {event for _, _, event, _ in CHANNELS} == set(EVENT_TYPES)
    doc = json.loads(COMMITTED.read_text())
    for channel in doc["channels"].values():
        placeholders = {p.strip("{}") for p in channel["address"].split(".") if p.startswith("{")}
        assert placeholders == set(channel["parameters"]), channel["address"]


def test_payload_schemas_resolve_inside_the_document():
    text = COMMITTED.read_text()
    doc = json.loads(text)
    refs = {part.split('"')[0] for part in text.split('"$ref": "')[1:]}
    for ref in refs:
        node = doc
        for key in ref.removeprefix("#/").split("/"):
            node = node[key]


async def test_the_headers_an_event_is_stored_with_are_the_documented_ones(spans):
    schema = json.loads(COMMITTED.read_text())["components"]["schemas"]["NatsHeaders"]
    log = MemoryEventLog()  # stores what EventLog stores (tests/contract/test_event_log_contract.py)
    request = job_requested("j1", ("p1",))
    traced = dict((await log.at(await log.publish(request))).headers)
    assert set(traced) == {"Nats-Msg-Id", "traceparent"}
    validate(traced, schema)
    validate({"Nats-Msg-Id": request.dedup_id()}, schema)  # untraced: traceparent is optional
    for wrong in ({"traceparent": traced["traceparent"]}, {**traced, "traceparent": "not-w3c"}):
        with pytest.raises(ValidationError):
            validate(wrong, schema)


async def test_the_gateway_serves_it(client):
    r = await client.get("/asyncapi.json")
    assert r.status_code == 200 and r.json() == json.loads(COMMITTED.read_text())
