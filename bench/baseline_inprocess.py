"""The specification's first design, minimal and faithful, for comparison.

A FastAPI app where ``generate-final-prompts`` starts a background task that
generates each persona's prompt in turn (one LLM call after another), saves it
to MongoDB, and pushes progress into an in-memory queue that the SSE endpoint
drains. Same endpoints, same messages, same LLM client and prompts as promptgen.

    python -m bench.baseline_inprocess --port 9300   (OPENAI_BASE_URL, MONGO_URL from the environment)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import BackgroundTasks, FastAPI
from pymongo import AsyncMongoClient
from sse_starlette import EventSourceResponse

from contracts.domain import Persona
from services.adapters.llm.offline import analyze_document, draft_persona
from services.adapters.llm.openai_provider import OpenAIProvider
from services.generator.prompt_generators import generate_for_mode
from services.runtime.settings import Settings


def create_app() -> FastAPI:
    settings = Settings(provider="openai")
    provider = OpenAIProvider(settings)
    mongo = AsyncMongoClient(settings.mongo_url)
    db = mongo["baseline"]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await provider.aclose()  # its HTTP session, closed in the loop that made it
        await mongo.close()

    app = FastAPI(lifespan=lifespan)
    templates: dict[str, object] = {}
    personas: dict[str, Persona] = {}
    queues: dict[str, asyncio.Queue] = {}

    @app.post("/scenario/analyze-scenario-enhanced", status_code=201)
    async def analyze(body: dict) -> dict:
        template_id = str(uuid.uuid4())
        templates[template_id] = analyze_document(body["scenario_document"])
        return {"template_id": template_id, "template_data": templates[template_id].model_dump()}

    @app.post("/scenario/generate-personas", status_code=201)
    async def make_personas(body: dict) -> dict:
        out = []
        for _ in range(body["count"]):
            pid = str(uuid.uuid4())
            draft = draft_persona(templates[body["template_id"]], body["persona_type"], pid)
            personas[pid] = Persona(**draft.model_dump(), id=pid, template_id=body["template_id"],
                                    persona_type=body["persona_type"])
            out.append(personas[pid].model_dump())
        return {"template_id": body["template_id"], "personas": out}

    async def run_job(job_id: str, body: dict) -> None:
        queue = queues[job_id]
        template = templates[body["template_id"]]
        await queue.put({"type": "status_update", "status": "processing"})
        results = {}
        for pid in body["persona_ids"]:  # one after another, as the first design did
            mode = body["mode_mapping"][pid]
            await queue.put({"type": "persona_progress", "persona_id": pid, "status": "processing"})
            try:
                out = await generate_for_mode(provider, template, personas[pid], mode)
                await db.personas_v2.update_one({"_id": pid}, {"$set": {"system_prompt": out.text,
                                                                        "prompt_mode": mode}}, upsert=True)
                results[pid] = {"status": "completed", "mode": mode, "prompt_length": len(out.text),
                                "persona_name": personas[pid].name}
            except Exception as exc:  # noqa: BLE001 - the first design carried on
                results[pid] = {"status": "failed", "mode": mode, "error": str(exc),
                                "persona_name": personas[pid].name}
            await queue.put({"type": "persona_progress", "persona_id": pid, "status": results[pid]["status"]})
        ok = sum(1 for r in results.values() if r["status"] == "completed")
        await queue.put({"type": "status_update", "status": "completed"})
        await queue.put({"type": "results", "results": {
            "template_id": body["template_id"], "personas": results, "total_personas": len(results),
            "successful": ok, "failed": len(results) - ok}})

    @app.post("/scenario/v2/generate-final-prompts", status_code=202)
    async def start(body: dict, background: BackgroundTasks) -> dict:
        job_id = str(uuid.uuid4())
        queues[job_id] = asyncio.Queue()
        background.add_task(run_job, job_id, body)
        return {"job_id": job_id, "message": "Prompt generation started", "status": "processing",
                "sse_endpoint": f"/scenario/v2/prompt-generation-status/{job_id}",
                "persona_count": len(body["persona_ids"])}

    @app.get("/scenario/v2/prompt-generation-status/{job_id}")
    async def status(job_id: str) -> EventSourceResponse:
        queue = queues[job_id]

        async def events():
            while True:
                message = await queue.get()
                yield {"data": json.dumps(message)}
                if message["type"] == "results":
                    return

        return EventSourceResponse(events())

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    os.environ.setdefault("PROMPTGEN_LOG_LEVEL", "warning")
    uvicorn.run(create_app(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
