"""The benchmark scenarios. Each returns a dict: parameters, raw figures, ratios."""

from __future__ import annotations

import asyncio
import os
import time

from bench import harness
from bench.measure import (
    Checkpoints,
    cpu_seconds,
    last_seq,
    raw_insert_read_models,
    raw_jetstream_publish,
    raw_mongo_write,
    raw_stream_read,
    run_loadgen,
)


def _personas_done(reports: list[dict]) -> int:
    return sum(s["results"]["successful"] for r in reports for j in r["jobs"] for s in j["streams"][:1])


def _wall(reports: list[dict]) -> float:
    return max(r["t_end"] for r in reports) - min(r["t0"] for r in reports)


def _run_to_stored(d, **loadgen) -> tuple[list[dict], float, float]:
    """Run the load generators against deployment ``d``: their reports, the wall time from the
    first POST to the later of the last ``results`` and every prompt stored in MongoDB (the
    projector's checkpoint past the end of the log; a job's end reaches its SSE clients before
    the projector has it), and how long after the last ``results`` that was (0 when before)."""
    with Checkpoints(d.nats_url) as heard:
        reports = run_loadgen(d.base_url, **loadgen)
        stored_at = heard.reached(asyncio.run(last_seq(d.nats_url)))
    results_at = max(r["t_end"] for r in reports)
    return reports, max(results_at, stored_at) - min(r["t0"] for r in reports), max(0.0, stored_at - results_at)


def overhead_bound(quick: bool) -> dict:
    """Offline provider (no LLM wait): end-to-end personas/s against the raw cost of the same I/O,
    and the MongoDB writes the projector made per persona."""
    from services.cli.embedded import free_port
    from services.runtime.settings import Settings

    jobs, per_job = (2, 10) if quick else (50, 100)
    projector_port = free_port()
    d = harness.start(env={"PROMPTGEN_PROJECTOR_HTTP_PORT": str(projector_port)})
    try:
        pids = d.pids()
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        reports, wall, stored_after = _run_to_stored(d, jobs=jobs, personas=per_job)
        cpu = {name: round(cpu_seconds(pid) - cpu_before[name], 2) for name, pid in pids.items()}
        done = _personas_done(reports)
        asyncio.run(_projector_caught_up(Settings(nats_url=d.nats_url, mongo_url=d.mongo_url)))
        writes = _projector_writes(projector_port)
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
        "wall_seconds": round(wall, 3),  # to every prompt stored in MongoDB
        "stored_after_last_results_seconds": round(stored_after, 3),
        "personas_per_second": round(ours, 1),
        "raw": {"events": events, "avg_event_bytes": avg_event, "jetstream_seconds": round(t_js, 3),
                "mongo_documents": docs, "mongo_seconds": round(t_mongo, 3),
                "personas_per_second_limit": round(raw_limit, 1)},
        "fraction_of_raw_limit": round(ours / raw_limit, 3),
        "projector_writes": writes,
        "writes_per_persona": {op: round(n / done, 2) for op, n in writes.items()},
        "cpu_seconds_by_process": cpu,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "target": ">= 0.30 of the raw JetStream + MongoDB limit",
    }


def _projector_writes(port: int) -> dict[str, int]:
    """The live fold's MongoDB writes so far, by operation, from the projector's /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    out = {s.labels["operation"]: int(s.value) for f in text_string_to_metric_families(text) for s in f.samples
           if s.name == "promptgen_projector_writes_total"}
    out["total"] = sum(out.values())
    return out


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
            _, wall, stored_after = _run_to_stored(d, jobs=1, personas=size)
            curve.append({"personas": size, "seconds": round(wall, 3),
                          "stored_after_last_results_seconds": round(stored_after, 3),
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
    """`promptgen rebuild` next to its parts in the same run: the raw ordered-consumer read of the
    same stream, and the raw unordered bulk insert of the same documents into the same server."""
    from services.runtime.settings import Settings

    jobs, per_job = (2, 20) if quick else (250, 100)
    d = harness.start()
    try:
        settings = Settings(nats_url=d.nats_url, mongo_url=d.mongo_url)
        asyncio.run(_synthetic_log(settings, jobs, per_job))
        # The running projector folds the new log first: measuring beside it would time both.
        t_catch_up = asyncio.run(_projector_caught_up(settings))
        n, t_raw = asyncio.run(raw_stream_read(d.nats_url, "PROMPTGEN"))
        t_fold, documents = asyncio.run(_fold_only(settings))
        pids = d.pids()
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        t_rebuild, reports = asyncio.run(_rebuild_through_the_projector(settings))
        cpu = {name: round(cpu_seconds(pid) - cpu_before[name], 2) for name, pid in pids.items()}
        t_written = next(t for t, done, total in reports if done >= total)
        t_insert, inserted, avg_doc = asyncio.run(raw_insert_read_models(d.mongo_url, settings.mongo_db))
        load = os.getloadavg()
    finally:
        d.stop()
    parts = t_raw + t_insert
    return {
        "parameters": {"events": n, "jobs": jobs, "personas_per_job": per_job,
                       "rebuild_processes": settings.rebuild_processes},
        "rebuild_seconds": round(t_rebuild, 3),
        "rebuild_events_per_second": round(n / t_rebuild, 1),
        "raw_read_seconds": round(t_raw, 3),
        "raw_read_events_per_second": round(n / t_raw, 1),
        "raw_insert_seconds": round(t_insert, 3),
        "raw_insert_documents": inserted,
        "avg_document_bytes": avg_doc,
        "rebuild_over_parts": round(t_rebuild / parts, 3),
        # progress reaches its end once every batch is written; then the checkpoint and the switch
        "written_seconds": round(t_written, 3),
        "written_over_parts": round(t_written / parts, 3),
        "switch_seconds": round(t_rebuild - t_written, 3),
        "progress_reports": [[round(t, 2), done, total] for t, done, total in reports[:: max(1, len(reports) // 50)]],
        "fraction_of_raw": round(t_raw / t_rebuild, 3),
        "fold_only_seconds": round(t_fold, 3),
        "fold_only_events_per_second": round(n / t_fold, 1),
        "fold_only_fraction_of_raw": round(t_raw / t_fold, 3),
        "documents_written": documents,
        "projector_catch_up_seconds": round(t_catch_up, 1),
        "cpu_seconds_by_process_during_rebuild": cpu,
        "load_average_after": [round(x, 2) for x in load],
        "target": "rebuild <= 2x (raw ordered read + raw unordered bulk insert of the same documents)",
    }


async def _rebuild_through_the_projector(settings) -> tuple[float, list[tuple[float, int, int]]]:
    """`promptgen rebuild`'s request to the running projector: seconds to the end, and each
    progress report of its writing stage (seconds since the request, events done, total); the
    switching stage follows the last."""
    from services.adapters.event_log import EventLog
    from services.cli.rebuild import _remote

    log = await EventLog.connect(settings, "bench-rebuild")
    reports: list[tuple[float, int, int]] = []
    t = time.perf_counter()

    async def progress(done: int, total: int, *, stage: str = "writing") -> None:
        if stage == "writing":
            reports.append((time.perf_counter() - t, done, total))

    try:
        final = await _remote(log, progress)
    finally:
        await log.close()
    assert final.get("finished") and not final.get("error"), final
    return time.perf_counter() - t, reports


async def _projector_caught_up(settings, timeout: float = 1800) -> float:
    """Seconds until the running projector's checkpoint reaches the end of the log, once the
    log has stopped growing (the generator works off the work items a synthetic log holds)."""
    from services.adapters.event_log import EventLog
    from services.adapters.read_models import open_read_models

    log = await EventLog.connect(settings, "bench-wait")
    models, close = open_read_models(settings)
    t = time.perf_counter()
    try:
        while await models.checkpoint() < (last := await log.last_seq()):
            if time.perf_counter() - t > timeout:
                raise TimeoutError(f"the projector did not reach {last} in {timeout} s")
            await asyncio.sleep(1)
    finally:
        await log.close()
        await close()
    return time.perf_counter() - t


async def _fold_only(settings) -> tuple[float, int]:
    """Read and fold the log as a rebuild does, without writing MongoDB: our share of its time."""
    from services.adapters.event_log import EventLog
    from services.projector.rebuild import folded_batches

    log = await EventLog.connect(settings, "bench-fold")
    t = time.perf_counter()
    documents = 0
    async for fold, _ in folded_batches(log):
        documents += sum(len(docs) for docs in fold.collections.values())
    elapsed = time.perf_counter() - t
    await log.close()
    return elapsed, documents


async def _synthetic_log(settings, jobs: int, per_job: int) -> None:
    """A realistic log written straight to the stream: each job's whole life, event by event."""
    import uuid
    from datetime import UTC, datetime, timedelta

    from contracts.domain import JobPersona, Persona, TokenUsage
    from contracts.events import JobCompleted, JobRequested, PersonaCompleted, PersonaCreated, PersonaProgress
    from services.adapters.event_log import EventLog
    from services.adapters.llm.base import PromptBrief
    from services.adapters.llm.offline import analyze_document, compose_system_prompt, draft_persona
    from services.generator.work import fan_out
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


class MockLLMProcess:
    """`promptgen mock-llm` in its own process."""

    def __init__(self, **options: float) -> None:
        import subprocess
        import sys

        from services.cli.embedded import free_port
        from tests.servers import wait_port

        self.port = free_port()
        argv = [sys.executable, "-m", "services.cli", "mock-llm", "--port", str(self.port)]
        for key, value in options.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, proc=self.proc)
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict:
        import httpx

        return httpx.get(f"http://127.0.0.1:{self.port}/admin/stats").json()

    def stop(self) -> None:
        from tests.servers import stop

        stop(self.proc)


def _llm_env(llm: MockLLMProcess, **extra: str) -> dict[str, str]:
    return {"OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "bench", **extra}


def _call_phases(reports: list[dict], started: list[float], latency: float, total: int) -> dict:
    """Where a latency-bound run's time went: until the first job call starts, from it to the last
    call's answer (the physical limit is the floor of this part), and from there to the last
    ``results``. The personas' own creation calls, before the first POST, are left out."""
    t0, t_end = min(r["t0"] for r in reports), max(r["t_end"] for r in reports)
    calls = sorted(t for t in started if t >= t0)
    if len(calls) != total:
        return {"calls": len(calls), "error": f"expected {total} job calls"}
    return {"first_call_after_post": round(calls[0] - t0, 3),
            "calls": round(calls[-1] + latency - calls[0], 3),
            "after_last_call": round(t_end - calls[-1] - latency, 3)}


def _inprocess_wall(d: harness.Deployment, llm: MockLLMProcess, *, jobs: int, personas: int) -> float:
    """The wall time of the specification's first design (``baseline_inprocess.py``) for the same
    jobs, against the same test LLM and MongoDB."""
    import subprocess
    import sys

    from services.cli.embedded import free_port
    from tests.servers import stop, wait_port

    port = free_port()
    baseline = subprocess.Popen([sys.executable, "-m", "bench.baseline_inprocess", "--port", str(port)],
                                env={**d.env, **_llm_env(llm), "MONGO_URL": d.mongo_url, "NATS_URL": d.nats_url},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc=baseline)
        return _wall(run_loadgen(f"http://127.0.0.1:{port}", jobs=jobs, personas=personas))
    finally:
        stop(baseline)


def latency_bound(quick: bool, *, inprocess: bool = True) -> dict:
    """LLM at fixed latency: wall time against the physical limit, and against the in-process design
    (not run with ``inprocess=False``: A/B runs of our part alone, ``bench.ab_latency``)."""
    import math

    jobs, per_job, latency_ms, concurrency = (2, 10, 100, 64) if quick else (10, 100, 500, 64)
    llm = MockLLMProcess(latency_ms=latency_ms)
    d = harness.start(env=_llm_env(llm, PROMPTGEN_LLM_CONCURRENCY=str(concurrency),
                                   PROMPTGEN_WORKER_CONCURRENCY=str(concurrency)))
    try:
        pids = d.pids() | {"test_llm": llm.proc.pid}
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        reports, ours, stored_after = _run_to_stored(d, jobs=jobs, personas=per_job)
        cpu = {name: round(cpu_seconds(pid) - cpu_before[name], 2) for name, pid in pids.items()}
        calls = llm.stats()
        phases = _call_phases(reports, calls["started"], latency_ms / 1000, total=jobs * per_job)
        theirs = _inprocess_wall(d, llm, jobs=jobs, personas=per_job) if inprocess else None
    finally:
        d.stop()
        llm.stop()
    total = jobs * per_job
    limit = math.ceil(total / concurrency) * latency_ms / 1000
    return {
        "parameters": {"jobs": jobs, "personas_per_job": per_job, "llm_latency_ms": latency_ms,
                       "PROMPTGEN_LLM_CONCURRENCY": concurrency},
        "personas": total,
        "wall_seconds": round(ours, 3),  # to the last results and every prompt stored in MongoDB
        "stored_after_last_results_seconds": round(stored_after, 3),
        "limit_seconds": limit,
        "time_over_limit": round(ours / limit, 3),
        # wall = first_call_after_post + calls + after_last_call (from the test LLM's call start times)
        "phases_seconds": phases,
        "llm_max_in_flight": calls["max_in_flight"],
        # from the personas' creation to the last results: the machine's two cores, by process
        "cpu_seconds_by_process": cpu,
        **({"inprocess_wall_seconds": round(theirs, 3), "speedup_over_inprocess": round(theirs / ours, 2)}
           if theirs is not None else {}),
        "target": "time/limit <= 1.10 and >= 5x the in-process design",
    }


def two_generators(quick: bool) -> dict:
    """1 vs 2 generator processes under LLM latency, each capped at 8 calls in flight."""
    per_job, latency_ms = (16, 100) if quick else (320, 200)
    out, phases = {}, {}
    for generators in (1, 2):
        llm = MockLLMProcess(latency_ms=latency_ms)
        d = harness.start(generators=generators, env=_llm_env(llm, PROMPTGEN_WORKER_CONCURRENCY="8"))
        try:
            reports, out[generators], _ = _run_to_stored(d, jobs=1, personas=per_job)
            phases[generators] = _call_phases(reports, llm.stats()["started"], latency_ms / 1000, total=per_job)
        finally:
            d.stop()
            llm.stop()
    limit_1 = per_job / 8 * latency_ms / 1000
    return {"parameters": {"personas": per_job, "llm_latency_ms": latency_ms, "PROMPTGEN_WORKER_CONCURRENCY": 8},
            "seconds_1": round(out[1], 3), "seconds_2": round(out[2], 3),
            # wall = first_call_after_post + calls + after_last_call, for 1 and for 2 generators
            "phases_seconds_1": phases[1], "phases_seconds_2": phases[2],
            "limit_seconds_1": limit_1, "limit_seconds_2": limit_1 / 2,
            "speedup": round(out[1] / out[2], 2), "target": "2 generators >= 1.8x one"}


def sse_fanout(quick: bool) -> dict:
    """Many SSE clients on one gateway: all get everything; latency next to a plain NATS subscriber."""
    import json as _json
    import subprocess
    import sys

    import httpx

    from bench.measure import percentile, rss_mib

    processes, jobs_each, personas, watchers = (1, 2, 5, 5) if quick else (2, 5, 20, 100)
    # Jobs long enough (10 waves of 1 s) to be watched live once every client is connected.
    llm = MockLLMProcess(latency_ms=100 if quick else 1000)
    d = harness.start(env=_llm_env(llm, PROMPTGEN_WORKER_CONCURRENCY="20", PROMPTGEN_LLM_CONCURRENCY="20"))
    try:
        gateway = d.pids()["gateway"]
        rss_before = rss_mib(gateway)
        nats_sub = subprocess.Popen([sys.executable, "-m", "bench.nats_listener", d.nats_url],
                                    stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
        assert nats_sub.stdout.readline().strip() == "ready"
        peak = {"rss": rss_before}
        import threading

        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.2):
                peak["rss"] = max(peak["rss"], rss_mib(gateway))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        reports = run_loadgen(d.base_url, jobs=jobs_each, personas=personas, watchers=watchers,
                              processes=processes)
        done.set()
        reference = _json.loads(nats_sub.communicate("stop\n", timeout=60)[0])
        received_nats = reference["received"]
        times, event_ids = {}, {}
        for r in reports:
            for j in r["jobs"]:
                after = 0
                while after is not None:  # the history comes a page at a time
                    history = httpx.get(f"{d.base_url}/scenario/v2/jobs/{j['job_id']}/events",
                                        params={"after": after, "limit": 1000}, timeout=60).json()
                    for e in history["events"]:
                        from datetime import datetime

                        times[e["seq"]] = datetime.fromisoformat(e["time"]).timestamp()
                        event_ids[e["seq"]] = e["event"]["event_id"]
                    after = history["next_after"]
    finally:
        d.stop()
        llm.stop()
    sse, nats_lat, clients, complete = [], [], 0, 0
    # Steady state: events that happened once every client was connected (not the connection storm).
    all_connected = max(s["connected"] for r in reports for j in r["jobs"] for s in j["streams"])
    for r in reports:
        for j in r["jobs"]:
            counts = {len(s["messages"]) for s in j["streams"]}
            for s in j["streams"]:
                clients += 1
                complete += bool(s["results"]) and len(counts) == 1
                for ident, _, at in s["messages"]:
                    seq = int(ident.split("-")[0])
                    if times.get(seq, 0) > all_connected:
                        sse.append(1000 * (at - times[seq]))
    for seq, eid in event_ids.items():
        if eid in received_nats and times[seq] > all_connected:
            nats_lat.append(1000 * (received_nats[eid][0] - times[seq]))  # when it was read
    return {
        "parameters": {"clients": clients, "jobs": processes * jobs_each, "personas_per_job": personas},
        "seconds_to_connect_all_clients": round(all_connected - min(r["t0"] for r in reports), 2),
        "clients": clients,
        "clients_complete": complete,
        "sse_latency_ms": {"p50": percentile(sse, 50), "p99": percentile(sse, 99), "n": len(sse)},
        "nats_latency_ms": {"p50": percentile(nats_lat, 50), "p99": percentile(nats_lat, 99), "n": len(nats_lat)},
        "nats_unreadable": reference["unreadable"],  # messages the reference could not take (none, normally)
        "p99_gap_ms": round(percentile(sse, 99) - percentile(nats_lat, 99), 2),
        "gateway_rss_mib": {"before": round(rss_before, 1), "peak": round(peak["rss"], 1)},
        "gateway_kib_per_client": round(1024 * (peak["rss"] - rss_before) / max(1, clients), 1),
        "sse_samples_ms": sse[:: max(1, len(sse) // 5000)],
        "nats_samples_ms": nats_lat[:: max(1, len(nats_lat) // 5000)],
        "target": "all clients complete; SSE p99 within 50 ms of the NATS subscriber's p99",
    }
