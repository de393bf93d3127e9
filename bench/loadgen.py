"""A load generator in its own process: talks HTTP and SSE to the gateway like real clients.

    python -m bench.loadgen --base-url URL --jobs 10 --personas 100 [--watchers 1] > result.json

Creates a template and distinct personas for each job, then POSTs the jobs at once and follows each with
``--watchers`` SSE clients. Prints one JSON object: wall times, per-message receipt
times (for latency), and what every client received.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import httpx

DOCUMENT = """# Renewal negotiation
A sales rep renews a contract with a skeptical buyer after two outages.

## Objectives
- Uncover the buyer's needs
- Handle objections about reliability

## Roles
- Sales rep: the learner
- Buyer - procurement lead under budget pressure
"""


async def make_personas(client: httpx.AsyncClient, count: int) -> tuple[str, list[str]]:
    r = await client.post("/scenario/analyze-scenario-enhanced", json={"scenario_document": DOCUMENT})
    r.raise_for_status()
    template_id = r.json()["template_id"]
    ids: list[str] = []
    while len(ids) < count:
        n = min(20, count - len(ids))
        r = await client.post("/scenario/generate-personas",
                              json={"template_id": template_id, "persona_type": "assess_mode_character", "count": n})
        r.raise_for_status()
        ids += [p["id"] for p in r.json()["personas"]]
    return template_id, ids


async def watch(client: httpx.AsyncClient, path: str) -> dict:
    """Follow one SSE stream to its end, recording (id, type, receipt time) per message."""
    received = []
    async with client.stream("GET", path) as resp:
        connected = time.time()
        ident = None
        async for line in resp.aiter_lines():
            if line.startswith("id:"):
                ident = line[3:].strip()
            elif line.startswith("data:"):
                at = time.time()
                # Only the results message is decoded: the others need just their id and time.
                kind = "results" if line.startswith('data: {"type":"results"') else "other"
                received.append((ident, kind, at))
                if kind == "results":
                    data = json.loads(line[5:])
                    summary = {k: data["results"][k] for k in ("total_personas", "successful", "failed")}
                    return {"messages": received, "results": summary, "connected": connected,
                            "cpu_seconds": time.process_time()}
    return {"messages": received, "results": None, "connected": connected}


async def run(args: argparse.Namespace) -> dict:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=args.base_url, timeout=None, limits=limits) as client:
        template_id, all_ids = await make_personas(client, args.personas * args.jobs)
        modes = ("learn_mode", "try_mode", "assess_mode")
        t0 = time.time()

        async def one_job(n: int) -> dict:
            ids = all_ids[n * args.personas : (n + 1) * args.personas]
            mapping = {pid: modes[i % 3] for i, pid in enumerate(ids)}
            posted = time.time()
            r = await client.post("/scenario/v2/generate-final-prompts",
                                  json={"template_id": template_id, "persona_ids": ids, "mode_mapping": mapping})
            r.raise_for_status()
            accepted = time.time() - posted
            job = r.json()
            streams = await asyncio.gather(*(watch(client, job["sse_endpoint"]) for _ in range(args.watchers)))
            return {"job_id": job["job_id"], "posted": posted, "accepted": accepted,
                    "finished": max(m["messages"][-1][2] for m in streams if m["messages"]), "streams": streams}

        jobs = await asyncio.gather(*(one_job(n) for n in range(args.jobs)))
        return {"t0": t0, "t_end": max(j["finished"] for j in jobs), "jobs": jobs,
                "personas_per_job": args.personas}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--personas", type=int, default=10)
    parser.add_argument("--watchers", type=int, default=1)
    args = parser.parse_args()
    json.dump(asyncio.run(run(args)), sys.stdout)


if __name__ == "__main__":
    main()
