"""The Markdown summary and the chart, from the JSON results."""

from __future__ import annotations

import json
from pathlib import Path


def _load(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}


def _rows(results: dict[str, dict]) -> list[tuple[str, str, str, str]]:
    rows = []
    r = results.get("latency_bound")
    if r and "error" not in r:
        rows.append(("latency-bound",
                     f"{r['wall_seconds']} s for {r['personas']} personas; limit {r['limit_seconds']} s",
                     f"time/limit {r['time_over_limit']}; {r['speedup_over_inprocess']}x the in-process design",
                     "<= 1.10; >= 5x"))
    r = results.get("overhead_bound")
    if r and "error" not in r:
        per = r.get("writes_per_persona")
        writes = f"; {per['total']} MongoDB writes per persona" if per else ""
        rows.append(("overhead-bound", f"{r['personas_per_second']} personas/s{writes}",
                     f"{r['fraction_of_raw_limit']:.0%} of raw JetStream + MongoDB "
                     f"({r['raw']['personas_per_second_limit']}/s)",
                     ">= 30%"))
    r = results.get("sse_fanout")
    if r and "error" not in r:
        rows.append(("SSE fan-out", f"{r['clients_complete']}/{r['clients']} clients complete",
                     f"p99 {r['sse_latency_ms']['p99']:.1f} ms vs NATS {r['nats_latency_ms']['p99']:.1f} ms; "
                     f"{r['gateway_kib_per_client']:.0f} KiB/client", "p99 within 50 ms"))
    for name, label in (("sse_fanout_light_clients", "SSE fan-out, light clients"),
                        ("sse_fanout_light_clients_two_gateways", "SSE fan-out, light clients, 2 gateways on one port"),
                        ("sse_many_clients", "SSE, many clients"),
                        ("sse_many_clients_two_gateways", "SSE, many clients, 2 gateways on one port")):
        r = results.get(name)
        if not r or "error" in r:
            continue
        arrival = (f" (as the kernel received them: {r['arrival_ms']['sse']['p99']:.1f} vs "
                   f"{r['arrival_ms']['nats']['p99']:.1f} ms)" if "arrival_ms" in r else "")
        rows.append((label, f"{r['clients_complete']}/{r['clients']} clients got exactly every message "
                     f"({r['parameters']['gateway_processes']} gateway process(es))",
                     f"{r['gateway_kib_per_client']:.1f} KiB/client; p99 {r['sse_latency_ms']['p99']:.1f} ms "
                     f"vs NATS {r['nats_latency_ms']['p99']:.1f} ms{arrival}",
                     "all; < 50 KiB; p99 within 50 ms"))
    r = results.get("replay_rebuild")
    if r and "error" not in r:
        if "rebuild_over_parts" in r:
            rows.append(("rebuild", f"{r['rebuild_seconds']} s for {r['parameters']['events']} events; "
                         f"raw read {r['raw_read_seconds']} s + raw insert of its {r['raw_insert_documents']} "
                         f"documents {r['raw_insert_seconds']} s",
                         f"rebuild / (read + insert) = {r['rebuild_over_parts']}" + (
                             f" (written: {r['written_over_parts']}; then the switch {r['switch_seconds']} s)"
                             if "written_over_parts" in r else ""), "<= 2"))
        else:
            rows.append(("rebuild", f"{r['rebuild_events_per_second']} events/s ({r['parameters']['events']} events)",
                         f"{r['fraction_of_raw']:.0%} of raw read ({r['raw_read_events_per_second']}/s)", ">= 50%"))
    r = results.get("scaling")
    if r and "error" not in r:
        curve = ", ".join(f"{c['personas']}: {c['ms_per_persona']} ms" for c in r["curve"])
        rows.append(("scaling", curve, f"ms per persona at the largest / at 100 = {r['largest_vs_100']}", "<= 1.5x"))
    r = results.get("two_generators")
    if r and "error" not in r:
        rows.append(("1 vs 2 generators", f"{r['seconds_1']} s vs {r['seconds_2']} s "
                     f"({r['parameters']['personas']} personas, LLM {r['parameters']['llm_latency_ms']} ms)",
                     f"{r['speedup']}x", ">= 1.8x"))
    r = results.get("generator_recovery")
    if r and "error" not in r and r["recovery_seconds"]:
        reference = r.get("recovery_seconds_with_30s_ack_wait")
        rows.append(("dead generator", f"{r['items_redelivered']} items delivered again "
                     f"{r['recovery_seconds']['first']} to {r['recovery_seconds']['last']} s after the kill "
                     f"(ack wait {r['parameters']['ack_wait_seconds']:g} s)",
                     f"with a 30 s ack wait: {reference['last']} s" if reference else "",
                     "within 10 s"))
    for name, r in results.items():
        if "error" in r:
            rows.append((name, "failed", r["error"].strip().splitlines()[-1][:120], ""))
    return rows


def write_report(out: Path) -> str:
    results = _load(out)
    quick = any(r.get("quick") for r in results.values())
    lines = [f"# Benchmark summary{' (quick sizes: not representative)' if quick else ''}", "",
             "| scenario | measured | ratio | target |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in _rows(results)]
    machine = next((r["machine"] for r in results.values() if "machine" in r), {})
    lines += ["", f"Machine: {machine.get('cpus')} CPUs, {machine.get('memory_gib')} GiB, "
                  f"Python {machine.get('python')}."]
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    _chart(results, out / "chart.png")
    return text


def _chart(results: dict[str, dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    scaling = results.get("scaling", {})
    if "curve" in scaling:
        xs = [c["personas"] for c in scaling["curve"]]
        axes[0].plot(xs, [c["ms_per_persona"] for c in scaling["curve"]], marker="o")
        axes[0].set_xscale("log")
        axes[0].set_ylim(bottom=0)
    axes[0].set(title="Cost per persona by job size", xlabel="personas in the job", ylabel="ms per persona")
    fanout = results.get("sse_fanout", {})
    if "sse_samples_ms" in fanout:
        axes[1].hist([fanout["sse_samples_ms"], fanout["nats_samples_ms"]], bins=40,
                     label=["SSE client", "NATS subscriber"])
        axes[1].legend()
    axes[1].set(title="Delivery latency", xlabel="ms from event to receipt", ylabel="messages")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
