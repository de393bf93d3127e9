"""The event log described for other services: an AsyncAPI 3 document built from the contracts.

Channels are the subjects (with their parameters), messages are the events (JSON
Schema payloads from the pydantic models), and the document says how the log is kept
(the JetStream stream, its retention, the ``Nats-Msg-Id`` rule). It is committed as
``contracts/asyncapi.json`` (``promptgen asyncapi`` writes it; a test fails when it is
out of date) and served by the gateway at ``/asyncapi.json``.
"""

from __future__ import annotations

import json
from typing import Any

from contracts import subjects
from contracts.events import (
    AvatarInteractionCreated,
    Envelope,
    JobCancelled,
    JobCancelRequested,
    JobCompleted,
    JobExpired,
    JobRequested,
    PersonaCompleted,
    PersonaCreated,
    PersonaFailed,
    PersonaProgress,
    PersonaPromptRequested,
    TemplateCreated,
)

# (channel name, subject with {parameters}, event, what it means)
CHANNELS: list[tuple[str, str, type[Envelope], str]] = [
    ("templateCreated", subjects.template_created("{template_id}"), TemplateCreated,
     "A scenario document became a template."),
    ("personaCreated", subjects.persona_created("{persona_id}"), PersonaCreated,
     "A persona was generated for a template (without a prompt yet)."),
    ("interactionCreated", subjects.interaction_created("{interaction_id}"), AvatarInteractionCreated,
     "An avatar interaction, linked to a persona whose prompt it uses."),
    ("jobRequested", subjects.job("{job_id}", "requested"), JobRequested,
     "A prompt-generation job: the template snapshot and each persona with its mode."),
    ("personaPromptRequested", subjects.job_persona("{job_id}", "{persona_id}", "requested"),
     PersonaPromptRequested, "A work item: one persona's prompt to generate (consumed by the generators)."),
    ("personaProgress", subjects.job_persona("{job_id}", "{persona_id}", "progress"), PersonaProgress,
     "A generator started on a persona (once per attempt)."),
    ("personaCompleted", subjects.job_persona("{job_id}", "{persona_id}", "completed"), PersonaCompleted,
     "A persona's system prompt, with its length, model and token usage."),
    ("personaFailed", subjects.job_persona("{job_id}", "{persona_id}", "failed"), PersonaFailed,
     "A persona that could not be generated, with a stable error_code."),
    ("jobCancelRequested", subjects.job("{job_id}", "cancel_requested"), JobCancelRequested,
     "Someone asked to stop the job."),
    ("jobCompleted", subjects.job("{job_id}", "completed"), JobCompleted,
     "Every persona ended: the job's final results (status completed or failed)."),
    ("jobCancelled", subjects.job("{job_id}", "cancelled"), JobCancelled,
     "The job was cancelled: its partial results."),
    ("jobExpired", subjects.job("{job_id}", "expired"), JobExpired,
     "The job passed its deadline: its partial results."),
]

PARAMETERS = {
    "template_id": "A template's id.",
    "persona_id": "A persona's id.",
    "interaction_id": "An avatar interaction's id.",
    "job_id": "A job's id: `promptgen.job.{job_id}.>` is the job's whole history, in order.",
}

LOG = (
    "Every event is stored in one JetStream stream, `PROMPTGEN` (subjects `promptgen.>`, file "
    "storage, limits retention; kept for `PROMPTGEN_EVENT_RETENTION_DAYS`, 30 days by default). "
    "The stream sequence is an event's position: resume a consumer from the last sequence you "
    "processed. Every publish carries a deterministic `Nats-Msg-Id` (the header below), so a "
    "retried publish of the same fact is stored once within the stream's duplicate window "
    "(at least 2 minutes). Decode tolerantly: ignore fields you do not know and skip types or "
    "versions you do not know; how events may change is in contracts/EVOLUTION.md."
)


def _schema(event: type[Envelope], schemas: dict[str, Any]) -> dict[str, Any]:
    schema = event.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
    schemas.update(schema.pop("$defs", {}))
    schemas[event.__name__] = schema
    return {"$ref": f"#/components/schemas/{event.__name__}"}


def document(version: str) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for name, address, event, summary in CHANNELS:
        type_ = event.model_fields["type"].default
        messages[event.__name__] = {
            "name": type_,
            "title": event.__name__,
            "summary": summary,
            "contentType": "application/json",
            "headers": {"$ref": "#/components/schemas/NatsHeaders"},
            "payload": _schema(event, schemas),
        }
        channels[name] = {
            "address": address,
            "description": summary,
            "parameters": {p: {"description": PARAMETERS[p]} for p in PARAMETERS if "{" + p + "}" in address},
            "messages": {event.__name__: {"$ref": f"#/components/messages/{event.__name__}"}},
        }
        operations[f"on{name[0].upper()}{name[1:]}"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{name}"},
            "summary": f"Follow {type_} events.",
            "messages": [{"$ref": f"#/channels/{name}/messages/{event.__name__}"}],
        }
    schemas["NatsHeaders"] = {
        "type": "object",
        "properties": {
            "Nats-Msg-Id": {
                "type": "string",
                "description": "The event's deduplication id: the same fact always has the same id.",
            },
            "traceparent": {
                "type": "string",
                "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
                "description": "Optional: the W3C Trace Context of the publish, present when its publisher "
                               "traces (OpenTelemetry). A consumer that traces continues the trace from it "
                               "(a span whose parent it is); one that does not ignores it.",
            },
            "tracestate": {
                "type": "string",
                "description": "Optional: the W3C Trace Context's vendor state, sent with `traceparent` "
                               "when there is any.",
            },
            "Nats-Expected-Last-Subject-Sequence": {
                "type": "string",
                "description": "On `persona.completed` and `persona.failed`: the condition JetStream checked "
                               "as it stored the event, with the header below (no event on the job's "
                               "`cancel_requested` subject past this sequence). Nothing for a consumer to do: "
                               "no persona outcome follows its job's cancel in the log.",
            },
            "Nats-Expected-Last-Subject-Sequence-Subject": {
                "type": "string",
                "description": "On `persona.completed` and `persona.failed`: the subject the condition above "
                               "is on, `promptgen.job.{job_id}.cancel_requested`.",
            },
        },
        "required": ["Nats-Msg-Id"],
    }
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "promptgen events", "version": version, "description": LOG},
        "defaultContentType": "application/json",
        "servers": {"nats": {"host": "127.0.0.1:4222", "protocol": "nats",
                             "description": "NATS with JetStream (NATS_URL)"}},
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": dict(sorted(schemas.items()))},
    }


def render(version: str) -> str:
    return json.dumps(document(version), indent=2, sort_keys=False) + "\n"
