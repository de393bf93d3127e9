"""The benchmark scenarios. Each returns a dict: parameters, raw figures, ratios."""

from __future__ import annotations

import asyncio
import time

from bench import harness
from bench.measure import (
    cpu_seconds,
    raw_jetstream_publish,
    raw_mongo_write,
    raw_stream_read,
    run_loadgen,
    summary,
)


def _personas_done(reports: list[dict]) -> int:
    return sum(s["results"]["successful"] for r in reports for j in r["jobs"] for s in j["streams"][:1])


def _wall(reports: list[dict]) -> float:
    return max(r["t_end"] for r in reports) - min(r["t0"] for r in reports)


def overhead_bound(quick: bool) -> dict:
    """Offline provider (no LLM wait): end-to-end personas/s against the raw cost of the same I/O."""
    jobs, per_job = (2, 10) if quick else (50, 100)
    d = harness.start()
    try:
        pids = d.pids()
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        reports = run_loadgen(d.base_url, jobs=jobs, personas=per_job)
        wall = _wall(reports)
        cpu = {name: round(cpu_seconds(pid) - cpu_before[name], 2) for name, pid in pids.items()}
        done = _personas_done(reports)
        events, avg_event = asyncio.run(_stream_stats(d.nats_url))
        docs = done * 2 + jobs  # a persona document and a job-persona document each, plus job documents
        t_js = asyncio.run(raw_jetstream_publish(d.nats_url, events, avg_event))
        t_mongo = asyncio.run(raw_mongo_write(d.mongo_url, docs, 600))
    finally:
        d.stop()
    raw_limit = done / (t_js + t_mongo)
    ours = done / wall
    return {
        "parameters": {"jobs": jobs, "personas_per_job": per_job, "provider": "offline"},
        "personas": done,
        "wall_seconds": round(wall, 3),
        "personas_per_second": round(ours, 1),
        "raw": {"events": events, "avg_event_bytes": avg_event, "jetstream_seconds": round(t_js, 3),
                "mongo_documents": docs, "mongo_seconds": round(t_mongo, 3),
                "personas_per_second_limit": round(raw_limit, 1)},
        "fraction_of_raw_limit": round(ours / raw_limit, 3),
        "cpu_seconds_by_process": cpu,
        "target": ">= 0.30 of the raw JetStream + MongoDB limit",
    }


async def _stream_stats(nats_url: str) -> tuple[int, int]:
    import nats

    nc = await nats.connect(nats_url)
    info = await nc.jetstream().stream_info("PROMPTGEN")
    await nc.close()
    return info.state.messages, max(1, info.state.bytes // max(1, info.state.messages))


def scaling(quick: bool) -> dict:
    """Cost per persona for growing jobs (offline provider): it must stay flat."""
    sizes = (10, 50) if quick else (10, 100, 1000, 5000)
    d = harness.start(env={"PROMPTGEN_MAX_PERSONAS_PER_JOB": str(max(sizes))})
    curve = []
    try:
        for size in sizes:
            report = run_loadgen(d.base_url, jobs=1, personas=size)
            wall = _wall(report)
            curve.append({"personas": size, "seconds": round(wall, 3),
                          "ms_per_persona": round(1000 * wall / size, 2)})
    finally:
        d.stop()
    base = next((c for c in curve if c["personas"] == 100), curve[0])
    return {
        "parameters": {"sizes": list(sizes), "provider": "offline"},
        "curve": curve,
        "largest_vs_100": round(curve[-1]["ms_per_persona"] / base["ms_per_persona"], 2),
        "target": "cost per persona at 5,000 within 1.5x of its value at 100",
    }


def replay_rebuild(quick: bool) -> dict:
    """`promptgen rebuild` events/s next to the raw ordered-consumer read of the same stream."""
    from services.rebuild_command import run_rebuild
    from services.settings import Settings

    jobs, per_job = (2, 20) if quick else (250, 100)
    d = harness.start()
    try:
        asyncio.run(_synthetic_log(Settings(nats_url=d.nats_url), jobs, per_job))
        n, t_raw = asyncio.run(raw_stream_read(d.nats_url, "PROMPTGEN"))
        settings = Settings(nats_url=d.nats_url, mongo_url=d.mongo_url)
        t = time.perf_counter()
        assert asyncio.run(run_rebuild(settings)) == 0
        t_rebuild = time.perf_counter() - t
    finally:
        d.stop()
    return {
        "parameters": {"events": n, "jobs": jobs, "personas_per_job": per_job},
        "rebuild_seconds": round(t_rebuild, 3),
        "rebuild_events_per_second": round(n / t_rebuild, 1),
        "raw_read_seconds": round(t_raw, 3),
        "raw_read_events_per_second": round(n / t_raw, 1),
        "fraction_of_raw": round(t_raw / t_rebuild, 3),
        "target": ">= 0.50 of the raw stream read rate",
    }


async def _synthetic_log(settings, jobs: int, per_job: int) -> None:
    """A realistic log written straight to the stream: each job's whole life, event by event."""
    import uuid
    from datetime import UTC, datetime, timedelta

    from contracts.domain import JobPersona, Persona, TokenUsage
    from contracts.events import JobCompleted, JobRequested, PersonaCompleted, PersonaCreated, PersonaProgress
    from services.bus import EventLog
    from services.generator.work import fan_out
    from services.llm.offline import analyze_document, compose_system_prompt, draft_persona
    from services.llm.base import PromptBrief
    from services.projector.process_manager import results_from_job

    log = await EventLog.connect(settings, "bench-synthetic")
    template = analyze_document("# Renewal negotiation\nA rep renews a contract.\n\n## Roles\n- Buyer - skeptical\n")
    sem = asyncio.Semaphore(256)

    async def publish(event) -> None:
        async with sem:
            await log.publish(event)

    for _ in range(jobs):
        job_id = str(uuid.uuid4())
        personas = [Persona(**draft_persona(template, "x", str(uuid.uuid4())).model_dump(), id=str(uuid.uuid4()),
                            template_id="t", persona_type="x") for _ in range(per_job)]
        await asyncio.gather(*(publish(PersonaCreated(persona=p)) for p in personas))
        job = JobRequested(job_id=job_id, template_id="t", template_data=template,
                           personas=[JobPersona(persona=p, mode="assess_mode") for p in personas],
                           deadline=datetime.now(UTC) + timedelta(hours=1))
        await publish(job)
        await asyncio.gather(*(publish(item) for item in fan_out(job)))
        await asyncio.gather(*(publish(PersonaProgress(job_id=job_id, persona_id=p.id)) for p in personas))
        prompt = compose_system_prompt(PromptBrief("persona", "assess_mode", template, personas[0]))
        await asyncio.gather(*(publish(PersonaCompleted(
            job_id=job_id, persona_id=p.id, persona_name=p.name, mode="assess_mode", generation_mode="assess_mode",
            prompt=prompt, prompt_length=len(prompt), provider="offline", model="m",
            usage=TokenUsage(prompt_tokens=100, completion_tokens=len(prompt) // 4))) for p in personas))
        docs = [{"persona_id": p.id, "persona_name": p.name, "mode": "assess_mode", "status": "completed",
                 "prompt_length": len(prompt)} for p in personas]
        results = results_from_job({"template_id": "t", "template_data": template.model_dump()}, docs)
        await publish(JobCompleted(job_id=job_id, status="completed", results=results))
    await log.close()
