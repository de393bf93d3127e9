"""Traces from real processes: `promptgen up` with the standard OTEL_* variables exports each
service's spans over OTLP (HTTP/protobuf) to a collector, here a small one on loopback that
decodes what it receives. One job makes one trace across the gateway, generator and
projector processes, stopping them flushes what they still held, and the collector's
credentials come from a file."""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from services.testing.deployment import UpProcess
from tests.flows import create_personas, create_template, cycle_modes, start_job
from tests.sse_client import read_sse


class Collector:
    """An OTLP/HTTP trace receiver on 127.0.0.1: every span it is sent, with its service."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        self.content_types: set[str] = set()
        self.authorizations: set[str | None] = set()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                collector.content_types.add(self.headers["Content-Type"])
                collector.authorizations.add(self.headers["Authorization"])
                if self.path == "/v1/traces":
                    collector.receive(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def receive(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append({
                        "service": resource.get("service.name"), "name": span.name,
                        "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                        "parent": span.parent_span_id.hex() or None,
                        "attributes": {a.key: a.value for a in span.attributes},
                    })

    def __enter__(self) -> Collector:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_up_exports_one_trace_per_job_across_its_processes_and_flushes_on_stop(tmp_path, scenario_document):
    secret = tmp_path / "otlp-headers"
    secret.write_text("Authorization=Bearer%20collector-token\n")
    with Collector() as collector:
        # A batch is exported only when full or at stop: what arrives proves the flush at shutdown.
        up = UpProcess(tmp_path / "up", env={"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
                                             "OTEL_EXPORTER_OTLP_HEADERS_FILE": str(secret),
                                             "OTEL_BSP_SCHEDULE_DELAY": "600000"})
        up.start()
        try:
            async with httpx.AsyncClient(base_url=up.base_url, timeout=30) as client:
                template_id = await create_template(client, scenario_document)
                ids = [p["id"] for p in await create_personas(client, template_id, 2)]
                job = await start_job(client, template_id, cycle_modes(ids))
                stream = await read_sse(client, job["sse_endpoint"])
                assert stream.messages[-1].data["results"]["successful"] == 2
            assert not collector.spans  # nothing exported yet: all held in the processes' batches
        finally:
            output = up.stop()

    assert collector.content_types == {"application/x-protobuf"}
    assert collector.authorizations == {"Bearer collector-token"}  # from the file, by every process
    assert "collector-token" not in output  # never logged
    start = [s for s in collector.spans if s["name"] == "POST /scenario/v2/generate-final-prompts"]
    assert len(start) == 1 and start[0]["service"] == "promptgen-gateway"
    trace_id = start[0]["trace_id"]
    found = [s for s in collector.spans if s["trace_id"] == trace_id]
    by_service = Counter((s["service"], s["name"]) for s in found)
    assert by_service[("promptgen-gateway", "publish job.requested")] == 1
    assert by_service[("promptgen-generator", "dispatch job.requested")] == 1
    assert by_service[("promptgen-generator", "llm call")] == 2
    assert by_service[("promptgen-projector", "project persona.completed")] == 2
    assert by_service[("promptgen-projector", "publish job.completed")] == 1
    assert by_service[("promptgen-projector", "project job.completed")] == 1
    assert by_service[("promptgen-gateway", "sse deliver job.completed")] == 1
    calls = [s for s in found if s["name"] == "llm call"]
    assert {s["attributes"]["promptgen.persona_id"].string_value for s in calls} == set(ids)
    # every span but the request has its parent in the same trace, whichever process made it
    ids_in_trace = {s["span_id"] for s in found}
    assert all(s["parent"] in ids_in_trace for s in found if s is not start[0])

    # the gateway's log line for the job carries the trace id
    lines = [json.loads(line.split("|", 1)[1]) for line in output.splitlines()
             if '"job_requested"' in line and "|" in line]
    assert [line["trace_id"] for line in lines] == [trace_id]
