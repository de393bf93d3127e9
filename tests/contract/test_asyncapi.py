"""The event log's AsyncAPI document: up to date with the contracts, and valid AsyncAPI 3."""

from __future__ import annotations

import json
from pathlib import Path

from jsonschema import Draft7Validator

from contracts.asyncapi import CHANNELS
from contracts.events import EVENT_TYPES
from services.cli.asyncapi import COMMITTED, current

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


async def test_the_gateway_serves_it(client):
    r = await client.get("/asyncapi.json")
    assert r.status_code == 200 and r.json() == json.loads(COMMITTED.read_text())
