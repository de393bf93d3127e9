"""SSE at scale: thousands of concurrent clients on one machine, every message delivered.

The jobs are posted with the test LLM paused, the clients (light raw-socket readers in
separate processes: :mod:`bench.sse_clients`) connect, and only then does the LLM answer: so
every live message is measured with every client connected, and the gateway's memory per
client is read with all of them connected and nothing else changing. A plain NATS subscriber
receives the same events in the same run: the latency reference.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime

import httpx

from bench import harness
from bench.loadgen import make_personas
from bench.measure import cpu_seconds, percentile, rss_mib, scheduled_ms, write_calls
from bench.scenarios import MockLLMProcess, _llm_env


def _sum(measure, pids: list[int]) -> float:
    return sum(measure(pid) for pid in pids)


def _pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` on ``cpus`` (threads started later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass


def _load() -> dict:
    with open("/proc/loadavg") as f:
        return dict(zip(("1m", "5m", "15m"), (float(x) for x in f.read().split()[:3]), strict=True))


async def _post_jobs(base_url: str, jobs: int, personas: int, admin: str) -> list[str]:
    """The jobs' ids: posted with the LLM paused (after it wrote the template and personas)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
        template_id, ids = await make_personas(client, jobs * personas)
        (await client.post(f"{admin}/pause")).raise_for_status()
        modes = ("learn_mode", "try_mode", "assess_mode")
        job_ids = []
        for n in range(jobs):
            mine = ids[n * personas : (n + 1) * personas]
            r = await client.post("/scenario/v2/generate-final-prompts", json={
                "template_id": template_id, "persona_ids": mine,
                "mode_mapping": {pid: modes[i % 3] for i, pid in enumerate(mine)}})
            r.raise_for_status()
            job_ids.append(r.json()["job_id"])
        return job_ids


def _history(base_url: str, job_id: str) -> list[dict]:
    events, after = [], 0
    while after is not None:  # a page at a time
        page = httpx.get(f"{base_url}/scenario/v2/jobs/{job_id}/events",
                         params={"after": after, "limit": 1000}, timeout=60).json()
        events += page["events"]
        after = page["next_after"]
    return events


def _expected_ids(history: list[dict]) -> list[str]:
    """The SSE message ids a client of the job must get, in order: what the gateway renders
    from the job's log (``render``: the pure function the stream uses)."""
    from contracts.events import parse_event
    from services.adapters.event_log import StoredEvent
    from services.gateway.sse_messages import render

    ids = []
    for e in history:
        stored = StoredEvent(seq=e["seq"], time=datetime.fromisoformat(e["time"]), subject="",
                             event=parse_event(json.dumps(e["event"])))
        ids += [item["id"] for item in render(stored)]
    return ids


def sse_many_clients(quick: bool) -> dict:
    """10,000 SSE clients on one gateway (quick: 20): every client gets exactly the job's messages."""
    return _clients_on_one_gateway(*((2, 3, 10, 1) if quick else (10, 20, 1000, 4)), quick=quick)


def sse_many_clients_two_gateways(quick: bool) -> dict:
    """The same 10,000 clients on two gateway processes sharing one port (SO_REUSEPORT), each
    with its own feed: clients per process and per core."""
    return _clients_on_one_gateway(*((2, 3, 10, 1) if quick else (10, 20, 1000, 4)), quick=quick, gateways=2)


def sse_fanout_light_clients(quick: bool) -> dict:
    """``sse_fanout``'s 1,000 clients (10 jobs of 20 personas), read by the light clients of
    ``sse_many_clients``: the gateway's share of the latency, without httpx's."""
    return _clients_on_one_gateway(*((2, 3, 10, 1) if quick else (10, 20, 100, 2)), quick=quick)


def sse_fanout_light_clients_two_gateways(quick: bool) -> dict:
    """The same 1,000 light clients on two gateway processes sharing the port: each wave's
    writes split between two event loops."""
    return _clients_on_one_gateway(*((2, 3, 10, 1) if quick else (10, 20, 100, 2)), quick=quick, gateways=2)


def _sockets(pid: int) -> int:
    import os

    try:
        return sum(os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:") for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _clients_on_one_gateway(jobs: int, personas: int, per_job: int, processes: int, *, quick: bool,
                            gateways: int = 1) -> dict:
    clients = jobs * per_job
    llm = MockLLMProcess(latency_ms=100 if quick else 1000)
    d = harness.start(gateways=gateways,  # several: `promptgen up --gateways`, on one port (SO_REUSEPORT)
                      env=_llm_env(llm, PROMPTGEN_WORKER_CONCURRENCY="20", PROMPTGEN_LLM_CONCURRENCY="20",
                                   PROMPTGEN_MAX_SSE_STREAMS=str(clients + 100)))
    admin = llm.base_url.removesuffix("/v1") + "/admin"
    procs: list[subprocess.Popen] = []
    try:
        pids = [pid for name, pid in d.pids().items() if name.startswith("gateway")]
        if os.environ.get("BENCH_PIN_GATEWAY"):  # a diagnostic: the gateway on core 0, all else on the others
            rest = set(range(1, os.cpu_count() or 2))
            for name, pid in d.pids().items():
                _pin(pid, {0} if name == "gateway" else rest)
            for child in (d.up.proc.pid, os.getpid()):
                _pin(child, rest)
        job_ids = asyncio.run(_post_jobs(d.base_url, jobs, personas, admin))
        nats_sub = subprocess.Popen([sys.executable, "-m", "bench.nats_listener", d.nats_url],
                                    stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
        assert nats_sub.stdout is not None and nats_sub.stdout.readline().strip() == "ready"
        sockets_before = [_sockets(pid) for pid in pids]
        rss_before, cpu_before = _sum(rss_mib, pids), _sum(cpu_seconds, pids)
        load_before = _load()
        t_connect = time.time()
        job_args = [a for j in job_ids for a in ("--job", j)]
        for _ in range(processes):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "bench.sse_clients", "--base-url", d.base_url, *job_args,
                 "--clients-per-job", str(per_job // processes)], stdout=subprocess.PIPE, text=True))
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline().split()
            assert line and line[0] == "connected", f"a client process ended before connecting: {line}"
        connected_at = time.time()
        rss_connected, cpu_connected = _sum(rss_mib, pids), _sum(cpu_seconds, pids)
        everyone = {**d.pids(), "nats_listener": nats_sub.pid}
        scheduled_before = {name: scheduled_ms(pid) for name, pid in everyone.items()}
        writes_before = _sum(write_calls, pids)
        per_process = {"clients": [_sockets(pid) - before for pid, before in zip(pids, sockets_before, strict=True)],
                       "rss_mib": [round(rss_mib(pid), 1) for pid in pids]}
        peak, done = {"rss": rss_connected}, threading.Event()

        def sample() -> None:
            while not done.wait(0.2):
                peak["rss"] = max(peak["rss"], _sum(rss_mib, pids))

        threading.Thread(target=sample, daemon=True).start()
        httpx.post(f"{admin}/resume").raise_for_status()
        reports = []
        for p in procs:
            out, _ = p.communicate(timeout=3600)
            if p.returncode:
                raise RuntimeError(f"an SSE client process failed with {p.returncode}")
            reports.append(json.loads(out))
        done.set()
        cpu_live = _sum(cpu_seconds, pids) - cpu_connected
        writes_live = _sum(write_calls, pids) - writes_before
        scheduled_live = {}
        for name, pid in everyone.items():
            ran, waited = scheduled_ms(pid)
            scheduled_live[name] = {"ran_ms": round(ran - scheduled_before[name][0]),
                                    "waited_ms": round(waited - scheduled_before[name][1])}
        live_seconds = time.time() - connected_at
        load_after = _load()
        reference = json.loads(nats_sub.communicate("stop\n", timeout=60)[0])
        received_nats = reference["received"]
        histories = {j: _history(d.base_url, j) for j in job_ids}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        d.stop()
        llm.stop()

    times = {e["seq"]: datetime.fromisoformat(e["time"]).timestamp() for h in histories.values() for e in h}
    sse, sse_end, complete, statuses = [], [], 0, {}
    arrived, arrived_end = [], []  # the same, by the kernel's receive time of the newest bytes read with it
    read_delay = []  # for each message: its read's time less that kernel time (the client's own delay)
    for job_id, history in histories.items():
        expected = _expected_ids(history)
        end_seq = int(expected[-1])  # the job's end, reported apart (it once waited for the projector)
        for r in reports:
            for s in r["jobs"][job_id]:
                statuses[s["status"]] = statuses.get(s["status"], 0) + 1
                ids = [ident for ident, _, _ in s["messages"]]
                complete += ids == expected  # every message, once, in order
                for ident, at, kernel in s["messages"]:
                    seq = int(ident.split("-")[0])
                    if times[seq] > connected_at:
                        (sse_end if seq == end_seq else sse).append(1000 * (at - times[seq]))
                        (arrived_end if seq == end_seq else arrived).append(1000 * (kernel - times[seq]))
                        read_delay.append(1000 * (at - kernel))
    nats_lat, nats_arrived = [], []
    for e in (e for h in histories.values() for e in h):
        if e["event"]["event_id"] in received_nats and times[e["seq"]] > connected_at:
            read_at, arrived_at = received_nats[e["event"]["event_id"]]
            nats_lat.append(1000 * (read_at - times[e["seq"]]))
            nats_arrived.append(1000 * (arrived_at - times[e["seq"]]))
    return {
        "parameters": {"clients": clients, "jobs": jobs, "personas_per_job": personas,
                       "client_processes": processes, "gateway_processes": gateways},
        "clients": clients,
        "clients_complete": complete,
        "http_statuses": statuses,
        "seconds_to_connect_all_clients": round(connected_at - t_connect, 2),
        "sse_latency_ms": {"p50": percentile(sse + sse_end, 50), "p99": percentile(sse + sse_end, 99),
                           "n": len(sse) + len(sse_end)},
        "sse_latency_ms_before_the_end": {"p50": percentile(sse, 50), "p99": percentile(sse, 99), "n": len(sse)},
        "sse_latency_ms_of_the_end": {"p50": percentile(sse_end, 50), "p99": percentile(sse_end, 99),
                                      "n": len(sse_end)},
        "nats_latency_ms": {"p50": percentile(nats_lat, 50), "p99": percentile(nats_lat, 99), "n": len(nats_lat)},
        "nats_unreadable": reference["unreadable"],  # messages the reference could not take (none, normally)
        "p99_gap_ms": round(percentile(sse + sse_end, 99) - percentile(nats_lat, 99), 2),
        "p99_gap_ms_before_the_end": round(percentile(sse, 99) - percentile(nats_lat, 99), 2),
        # The same, by the kernel's receive time (SO_TIMESTAMPNS) of the newest bytes of the read
        # that took each message: without the time the client processes, on the same two cores,
        # waited to read it (exact for a read's newest message, an upper bound for the others).
        "arrival_ms": {"sse": {"p50": percentile(arrived + arrived_end, 50),
                               "p99": percentile(arrived + arrived_end, 99)},
                       "nats": {"p50": percentile(nats_arrived, 50), "p99": percentile(nats_arrived, 99)}},
        "arrival_p99_gap_ms": round(percentile(arrived + arrived_end, 99) - percentile(nats_arrived, 99), 2),
        "client_read_delay_ms": {"p50": percentile(read_delay, 50), "p99": percentile(read_delay, 99)},
        "gateway_rss_mib": {"before_clients": round(rss_before, 1), "all_connected": round(rss_connected, 1),
                            "peak": round(peak["rss"], 1)},
        "gateway_kib_per_client": round(1024 * (rss_connected - rss_before) / clients, 1),
        "gateway_kib_per_client_at_peak": round(1024 * (peak["rss"] - rss_before) / clients, 1),
        "gateway_cpu_seconds": {"connecting": round(cpu_connected - cpu_before, 2), "live": round(cpu_live, 2),
                                "live_wall_seconds": round(live_seconds, 2)},
        # clients each gateway process held (its sockets, less those it had before) and its RSS
        "per_gateway_process": per_process,
        # While live, each process's time on a core and time ready to run with both cores busy
        # (schedstat; the client processes' own CPU time: client_cpu_seconds).
        "scheduled_while_live": scheduled_live,
        "gateway_write_calls_while_live": writes_live,
        "clients_per_gateway_cpu_core_while_live": round(clients / max(0.01, cpu_live / live_seconds)),
        "client_cpu_seconds": [round(r["cpu_seconds"], 2) for r in reports],
        "load_average": {"before": load_before, "after": load_after},
        "target": "every client gets every message; < 50 KiB of gateway memory per client; "
                  "SSE p99 within 50 ms of the NATS subscriber's p99",
    }
