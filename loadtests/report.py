"""Regenerate BENCHMARKS.md: run the benchmarks, then render their JSON into the report.

Run: ``python -m loadtests.report`` (about 15 minutes: serve benchmark at 10k and 1M customers,
step micro-benchmark, ingest benchmark with 200k events, sweep benchmark at 1M customers,
freshness benchmark, about 5 minutes more; the Feast peer, about 3 more, plus Feast's install into
its own venv the first time). ``--render-only`` re-renders from the JSON already in
``artifacts/``; ``--skip-ingest``, ``--skip-sweep``, ``--skip-freshness`` and ``--skip-peer`` keep
the last figures.

Only the marked regions of BENCHMARKS.md are rewritten (``<!-- BEGIN name -->`` ..
``<!-- END name -->``): the serve, ingest and sweep figures. Sections others add
(a soak test, say) outside the markers are kept as they are.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from router.settings import KafkaSettings

__all__ = ["render", "render_freshness", "render_ingest", "render_serve", "render_sweep", "update_file"]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
REPORT = ROOT / "BENCHMARKS.md"

TARGETS = {
    "ratio": 0.85,
    "decision_p50_us": 150.0,
    "decision_p99_us": 1000.0,
    "e2e_p99_us_at_1000": 5000.0,
    "rss_mb": 200.0,
}

_HEADER = """# Benchmarks

Regenerate the generated sections with `python -m loadtests.report` (about 10 minutes on the
2-core dev machine); `python -m loadtests.report --render-only` re-renders them from the JSON
in `artifacts/`. Only the regions between the BEGIN/END markers are rewritten.
"""


def _us(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v / 1000:.2f} ms" if v >= 1000 else f"{v:.0f} µs"


def _num(v: float) -> str:
    return f"{v:,.0f}"


def _pop(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else f"{n // 1000}k" if n >= 1000 else str(n)


def _reused(r: dict[str, Any]) -> str:
    churn = r.get("server", {}).get("request_churn")
    total = churn["computed"] + churn["reused"] if churn else 0
    return f"{churn['reused'] / total:.1%}" if churn and total else "-"


def _server(run: dict[str, Any], prefix: str) -> dict[str, float]:
    for key, q in run.get("server", {}).items():
        if key.startswith(prefix):
            return q
    return {}


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def render_serve(serve: dict[str, Any], micro: dict[str, Any] | None) -> str:
    """Markdown for the decision path (bench_serve JSON, optional micro JSON)."""
    m = serve["machine"]
    cfg = serve["config"]
    pops = serve["populations"]
    out: list[str] = []
    w = out.append
    w("## Decision path (`python -m loadtests.bench_serve`)\n")
    w(
        f"Run {serve['started_at']} .. {serve['finished_at']} ({serve.get('wall_seconds', 0) / 60:.0f} min, "
        f"commit {serve.get('commit', '?')}) on "
        f"{m['cpus']} × {m['cpu_model']}, Python {m['python']}, uvicorn {m['uvicorn_loop_http']}, one API worker. "
        f"{m['pinning']}, nice {m.get('nice', 0)}. Load average at start {m['load_average_at_start'][0]:.1f} (the machine is shared: "
        "absolute figures are noisy, ratios are measured in the same run). Floor = `POST /bench/snapshot`: the "
        "same body, the same app, client and pool, one `HGET` of the snapshot returned as stored "
        "(`router/api/controllers/bench.py`). The per-key rate limit is raised for the run.\n"
    )
    for p in pops:
        probe = p.get("probe", {})
        if probe and not probe.get("clv_percentile_available", True):
            w(
                f"**Warning — {_pop(p['customers'])} customers: the API had no CLV histogram** (a known customer's "
                "`clv_score` stayed null for 15 s after start: the refresh of the population histogram failed). "
                "Its decisions were made without the CLV percentile: cheaper than real ones, and value-blind.\n"
            )
    w(
        f"### Saturation (wrk, closed loop, {cfg['connections']} connections, {cfg['duration']:.0f} s runs, "
        f"floor and classify alternated {cfg['repeats']}×, medians)\n"
    )
    w(
        "Two throughput figures: req/s as measured, and the worker's CPU time per request "
        "(`psutil` CPU seconds of the worker over the run ÷ requests), whose inverse is what one dedicated core "
        "would serve; on a shared machine the second is the steadier one. Ratios are medians of the ratios of "
        "adjacent runs. *Degraded* counts answers the service gave without Redis (a call over "
        "`redis.timeout_ms`): those are cheap and must not pass for throughput.\n"
    )
    w(
        "| customers | endpoint | req/s | p50 | p90 | p99 | p99.9 | errors | degraded | req/s ÷ floor "
        "| worker CPU / req | req per CPU-s | ÷ floor | p50 ÷ floor | p99 ÷ floor |"
    )
    w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for p in pops:
        sat = p["saturation"]
        floor = sat["floor"]
        for kind in ("floor", "classify", "screenpop", "handoff"):
            s = sat[kind]
            cap = s.get("cpu_capacity_rps")
            if kind == "classify":
                ratio = (
                    f"**{sat['classify_to_floor_rps_ratio_median']:.2f}** ("
                    + ", ".join(f"{r:.2f}" for r in sat["classify_to_floor_rps_ratios"])
                    + ")"
                )
                cpu_ratios = sat.get("classify_to_floor_cpu_capacity_ratios")
                cap_ratio = (
                    f"**{sat['classify_to_floor_cpu_capacity_ratio_median']:.2f}** ("
                    + ", ".join(f"{r:.2f}" for r in cpu_ratios)
                    + ")"
                    if cpu_ratios
                    else "-"
                )
            else:
                ratio = f"{s['rps'] / floor['rps']:.2f}"
                cap_ratio = f"{cap / floor['cpu_capacity_rps']:.2f}" if cap and floor.get("cpu_capacity_rps") else "-"
            w(
                f"| {_pop(p['customers'])} | {kind} | {_num(s['rps'])} | {_us(s['p50_us'])} | {_us(s['p90_us'])} | "
                f"{_us(s['p99_us'])} | {_us(s['p999_us'])} | {s['errors']} | {s.get('degraded', 0):.0f} | {ratio} | "
                f"{_us(s.get('server_cpu_us_per_request'))} | {_num(cap) if cap else '-'} | {cap_ratio} | "
                f"{s['p50_us'] / floor['p50_us']:.2f} | {s['p99_us'] / floor['p99_us']:.2f} |"
            )
    w("")
    w(
        f"### Fixed offered load (open loop, latency from the scheduled send time, {cfg['open_duration']:.0f} s per run)\n"
    )
    w(
        "*Worker busy* is the worker's CPU time over the run ÷ its duration: near 100 % the worker is at "
        "capacity and the latency is queueing. "
        "End-to-end latency seen by the client, and server-side histograms of the same interval "
        "(`router_http_request_duration_seconds`, `router_decision_duration_seconds`, "
        "`router_redis_duration_seconds{op=read_customer}`, `router_model_inference_seconds{site=request}`; "
        "quantiles interpolated inside buckets as PromQL does). *Churn reused*: share of known customers' "
        "decisions that served the consumer's stored score because it was provably still the model's answer "
        "(`router_request_churn_total{source}`); the others ran the model.\n"
    )
    w(
        "| customers | offered | endpoint | achieved | worker busy | p50 | p90 | p99 | p99.9 | max | failed / degraded | "
        "server http p50 / p99 | decision p50 / p99 | Redis read p50 / p99 | ONNX p50 / p99 | churn reused |"
    )
    w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for p in pops:
        for r in p["open_loop"]:
            route = "/bench/snapshot" if r["kind"] == "floor" else "/v1/classify"
            http = _server(r, f"router_http_request_duration_seconds|route={route}")
            dec = _server(r, "router_decision_duration_seconds")
            red = _server(r, "router_redis_duration_seconds|op=read_customer")
            onnx = _server(r, "router_model_inference_seconds|site=request")
            cpu = r.get("server_cpu_us_per_request")
            busy = f"{r['achieved_rps'] * cpu / 1e6:.0%}" if cpu else "-"
            over = r["achieved_rps"] < 0.95 * r["offered_rps"] or r["non_200"] + r["errors"] > 0.01 * r["scheduled"]
            w(
                f"| {_pop(p['customers'])} | {_num(r['offered_rps'])}/s | {r['kind']} | {_num(r['achieved_rps'])}/s"
                f"{' (over capacity)' if over else ''} | {busy} | {_us(r['p50_us'])} | {_us(r['p90_us'])} | {_us(r['p99_us'])} | {_us(r['p999_us'])} | "
                f"{_us(r['max_us'])} | {r['non_200'] + r['errors']} / "
                f"{r['server'].get('degraded_decisions', {}).get('count', 0):.0f} | "
                f"{_us(http.get('p50_us'))} / {_us(http.get('p99_us'))} | "
                f"{_us(dec.get('p50_us'))} / {_us(dec.get('p99_us'))} | "
                f"{_us(red.get('p50_us'))} / {_us(red.get('p99_us'))} | "
                f"{_us(onnx.get('p50_us'))} / {_us(onnx.get('p99_us'))} | {_reused(r)} |"
            )
    w("")
    if len(pops) > 1:
        small, big = pops[0], pops[-1]
        w(f"### Population scale: {_pop(small['customers'])} → {_pop(big['customers'])} customers\n")
        w(f"| figure | {_pop(small['customers'])} | {_pop(big['customers'])} | ratio |")
        w("|---|---|---|---|")

        def row(name: str, a: float, b: float, fmt: Any = _us) -> None:
            w(f"| {name} | {fmt(a)} | {fmt(b)} | {b / a:.2f} |" if a else f"| {name} | {fmt(a)} | {fmt(b)} | - |")

        row(
            "classify req/s at saturation",
            small["saturation"]["classify"]["rps"],
            big["saturation"]["classify"]["rps"],
            _num,
        )
        row("floor req/s at saturation", small["saturation"]["floor"]["rps"], big["saturation"]["floor"]["rps"], _num)
        for kind in ("floor", "classify"):
            a_cpu = small["saturation"][kind].get("server_cpu_us_per_request")
            b_cpu = big["saturation"][kind].get("server_cpu_us_per_request")
            if a_cpu and b_cpu:
                row(f"{kind}: worker CPU per request at saturation", a_cpu, b_cpu)
        for rate in cfg["rates"]:
            a = next(r for r in small["open_loop"] if r["kind"] == "classify" and r["offered_rps"] == rate)
            b = next(r for r in big["open_loop"] if r["kind"] == "classify" and r["offered_rps"] == rate)
            for q in ("p50_us", "p99_us"):
                row(f"classify {q[:-3]} at {rate:,.0f}/s (end to end)", a[q], b[q])
            ra = _server(a, "router_redis_duration_seconds|op=read_customer")
            rb = _server(b, "router_redis_duration_seconds|op=read_customer")
            if ra and rb:
                row(f"Redis read p50 at {rate:,.0f}/s (server side)", ra["p50_us"], rb["p50_us"])
        w("")
    w("### Memory\n")
    w(
        "| customers | load time | Redis bytes / customer (used_memory) | customer hash (MEMORY USAGE, median) | phone index key | API worker RSS |"
    )
    w("|---|---|---|---|---|---|")
    for p in pops:
        red = p["redis"]
        w(
            f"| {_pop(p['customers'])} | {p['load_seconds']:.0f} s ({p['customers'] / max(p['load_seconds'], 1e-9):,.0f}/s) | "
            f"{red['bytes_per_customer']:,.0f} B | {red['customer_hash_median_bytes']:,.0f} B | "
            f"{red['phone_index_median_bytes']:,.0f} B | {p['rss_bytes'] / 2**20:,.0f} MiB |"
        )
    for p in pops:
        h = p.get("clv_histogram_read")
        if h:
            w(
                f"\n{_pop(p['customers'])}: the API's CLV histogram refresh (`StateStore.histogram`, 256 shards) reads "
                f"{h['fields']:,.0f} fields ({h['bins']:,.0f} bins) in {h['median_ms']:.0f} ms from the benchmark process."
            )
    w(
        "\nRedis bytes per customer include the snapshot hash, its phone index entry and the CLV histogram; "
        "measured after loading, before any request (decisions add audit stream entries).\n"
    )
    if micro:
        w("### Where a decision's CPU goes (`python -m loadtests.micro`, in process, no HTTP, no Redis)\n")
        w("| step | µs per call |")
        w("|---|---|")
        names = {
            "snapshot_decode_us": "msgpack decode of the snapshot",
            "features_us": "features",
            "predict_one_us": "ONNX churn `predict_one`",
            "scores_us": "CLV + percentile + upsell + advocacy",
            "policy_us": "policy `decide`",
            "decide_total_us": "**`DecisionService.decide` whole** (the above + metrics, ids, audit enqueue)",
            "decide_reused_us": "**`DecisionService.decide` whole, reusing the consumer's score** (no ONNX)",
            "json_encode_answer_us": "JSON encoding of the answer",
        }
        for key, label in names.items():
            if key in micro:
                w(f"| {label} | {micro[key]:.1f} |")
        w("")
    prof = next((p["profile"] for p in pops if p.get("profile")), None)
    if prof and "error" not in prof:
        w(
            f"### Profile of classify under saturation (py-spy, {prof['samples']:,} samples of the worker, "
            f"{_pop(next(p['customers'] for p in pops if p.get('profile')))} customers)\n"
        )
        w("Own time by library:\n")
        w("| library | share |")
        w("|---|---|")
        for name, share in prof["by_library"]:
            w(f"| {name} | {share:.1f} % |")
        w("\nTop functions by own time:\n")
        w("| function | own |")
        w("|---|---|")
        for name, share in prof["own"]:
            w(f"| `{name}` | {share:.1f} % |")
        w("\nService functions, inclusive (stacks py-spy could not unwind to the root count only below it):\n")
        w("| function | inclusive |")
        w("|---|---|")
        for name, share in prof["router_inclusive"]:
            w(f"| `{name}` | {share:.1f} % |")
        w("")
    elif prof:
        w(f"Profile: {prof['error']}\n")
    w(_targets(serve))
    return "\n".join(out)


def _targets(serve: dict[str, Any]) -> str:
    pops = serve["populations"]
    lines = ["### Targets of issue #7 (benchmarks, not tests: what was measured)\n"]
    lines.append("| target | measured | met |")
    lines.append("|---|---|---|")
    for p in pops:
        n = _pop(p["customers"])
        ratio = p["saturation"]["classify_to_floor_rps_ratio_median"]
        lines.append(f"| {n}: classify req/s ≥ 0.85 × floor | {ratio:.2f} × | {_met(ratio >= TARGETS['ratio'])} |")
        cap = p["saturation"].get("classify_to_floor_cpu_capacity_ratio_median")
        if cap is not None:
            lines.append(
                f"| {n}: classify req per worker CPU-second ≥ 0.85 × floor | {cap:.2f} × | {_met(cap >= TARGETS['ratio'])} |"
            )
        at = next((r for r in p["open_loop"] if r["kind"] == "classify" and r["offered_rps"] == 1000), None)
        if at:
            dec = _server(at, "router_decision_duration_seconds")
            if dec:
                lines.append(
                    f"| {n}: decision time p50 ≤ 150 µs at 1,000/s | {_us(dec['p50_us'])} | "
                    f"{_met(dec['p50_us'] <= TARGETS['decision_p50_us'])} |"
                )
                lines.append(
                    f"| {n}: decision time p99 ≤ 1 ms at 1,000/s | {_us(dec['p99_us'])} | "
                    f"{_met(dec['p99_us'] <= TARGETS['decision_p99_us'])} |"
                )
            lines.append(
                f"| {n}: end-to-end p99 ≤ 5 ms at 1,000/s | {_us(at['p99_us'])} | "
                f"{_met(at['p99_us'] <= TARGETS['e2e_p99_us_at_1000'])} |"
            )
        rss = p["rss_bytes"] / 2**20
        lines.append(f"| {n}: worker RSS ≤ 200 MB | {rss:.0f} MiB | {_met(rss <= TARGETS['rss_mb'])} |")
    if len(pops) > 1:
        a = next((r for r in pops[0]["open_loop"] if r["kind"] == "classify" and r["offered_rps"] == 1000), None)
        b = next((r for r in pops[-1]["open_loop"] if r["kind"] == "classify" and r["offered_rps"] == 1000), None)
        if a and b:
            growth = b["p50_us"] / a["p50_us"]
            lines.append(
                f"| flat latency {_pop(pops[0]['customers'])} → {_pop(pops[-1]['customers'])} (p50 at 1,000/s) | "
                f"× {growth:.2f} | {_met(growth <= 1.25)} |"
            )
    return "\n".join(lines) + "\n"


def render_ingest(ingest: dict[str, Any]) -> str:
    """Markdown for the ingest benchmark JSON (``python -m loadtests.bench_ingest``)."""
    lines = [
        f"## Ingest (`python -m loadtests.bench_ingest --events {ingest['events']}`)\n",
        f"One consumer process, {ingest['partitions']} partitions, batches of up to {ingest['batch_max']:,} records, "
        f"{ingest.get('lanes', 1)} lanes, record cache {ingest.get('cache_customers', 0):,} customers. *Consumer CPU* "
        "is the CPU time of the consumer's process per event, *Redis CPU* that of redis-server over the same "
        "interval. Both are single-threaded, on a core each at best: 1e6 ÷ the larger of the two is the most one "
        "consumer process can apply per second, however well its Redis round trips overlap.\n",
        "*Ceilings* are measured in the same run by this process with fresh consumer groups: *raw* only fetches, "
        "*decode* also decodes every event, *compute* runs the consumer's per-event computation and nothing else "
        "(decode, fold, features, batched ONNX, CLV, snapshot encoding; snapshots kept in memory, no Redis, no "
        "bookkeeping). No consumer of this reducer and model in one CPython process can beat *compute*.\n",
        "| customers | distinct written | events / customer | raw consume | decode ceiling | compute ceiling | "
        "router applied + committed | ÷ raw | ÷ compute | consumer CPU / event | compute CPU / event | "
        "Redis CPU / event | record cache hits | Redis bytes / customer | MEMORY USAGE median |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in ingest["runs"]:
        lines.append(
            f"| {_pop(r['customers_population'])} | {r['customers_written']:,} | {r['events_per_customer']:.1f} | "
            f"{r['raw_consume_events_per_s']:,.0f}/s | {_rate(r.get('decode_events_per_s'))} | "
            f"{_rate(r.get('compute_events_per_s'))} | **{r['router_applied_committed_events_per_s']:,.0f}/s** | "
            f"{r['ratio_to_raw']:.3f} | {_ratio(r['router_applied_committed_events_per_s'], r.get('compute_events_per_s'))} | "
            f"{r['consumer_cpu_us_per_event']:.1f} µs | {_us_per_event(r.get('compute_cpu_us_per_event'))} | "
            f"{r['redis_cpu_us_per_event']:.1f} µs | "
            f"{r.get('record_cache_hit_rate', 0.0):.0%} | "
            f"{r['used_memory_delta_per_customer_bytes']:,.0f} B | {r['memory_usage_median_bytes']:,.0f} B |"
        )
    groups = [(r, g) for r in ingest["runs"] for g in r.get("groups", [])]
    if groups:
        lines.append(
            "\n**Scale-out**: groups of `router consume` processes on the same topic (fresh group and key prefix), "
            "from their first stored offsets until all events are applied; broker, Redis and every consumer share "
            "this machine's two cores. "
            + "; ".join(
                f"{_pop(r['customers_population'])}: {g['processes']:.0f} × → {g['events_per_s']:,.0f}/s"
                for r, g in groups
            )
            + "."
        )
    lines.append(
        f"\nA customer with 95 days of daily usage, orders and resolved tickets: "
        f"{ingest['heavy_customer_memory_usage_bytes']:,.0f} B (`MEMORY USAGE`). Target of issue #3: ≥ 50,000 events/s "
        "per process and ≥ 0.5 × raw; ≤ 2 KB per customer snapshot."
    )
    lines += ["", "| target (issue #19, item 2) | measured | met |", "|---|---|---|"]
    for r in ingest["runs"]:
        rate, ceiling = r["router_applied_committed_events_per_s"], r.get("compute_events_per_s")
        n = _pop(r["customers_population"])
        lines.append(
            f"| {n}: ≥ 50,000 events/s applied and committed per process | {rate:,.0f}/s | {_met(rate >= 50_000)} |"
        )
        if ceiling:
            lines.append(
                f"| {n}: ≥ 0.7 × the same-run compute ceiling | {rate / ceiling:.2f} × | {_met(rate >= 0.7 * ceiling)} |"
            )
    return "\n".join(lines) + "\n"


def render_sweep(sweep: dict[str, Any]) -> str:
    """Markdown for the sweep benchmark JSON (``python -m loadtests.bench_sweep``)."""
    pop, m, cfg = sweep["population"], sweep["machine"], sweep["config"]
    consumer = sweep.get("consumer", {"partitions": 6, "sweep_batch": 250})
    load = ", ".join(f"{x:.1f}" for x in m["load_average_at_start"])
    lines = [
        f"## Sweep: silent customers rescored (`python -m loadtests.bench_sweep --customers {pop['customers']}`)\n",
        f"Run {sweep['started_at']} (commit {sweep['commit']}) on {m['cpus']} × {m['cpu_model']}; load average at "
        f"start {load} (the machine is shared). {pop['customers']:,} customers loaded as of {cfg['days_ago']:g} days "
        f"ago ({pop['due_at_start']:,} due), one `router consume` process owning all {consumer['partitions']} "
        f"partitions, sweep steps of {consumer['sweep_batch']:,} customers. *Rescored/s* is customers ÷ the sweep's "
        "own duration (`router_sweep_duration_seconds`); "
        "*consumer CPU* the CPU time of that process, *Redis CPU* that of redis-server (`INFO cpu`) over the "
        f"sweep, per customer; *of which the sweep* leaves out what the idle consumer spends "
        f"({sweep.get('consumer_idle_cpu_share', 0.0):.1%} of a core: polling the broker). Under classify load the "
        "second pass rescores the same customers again (their due "
        "index entries set to 0) while the API serves a fixed open-loop load; Redis CPU of the requests alone, "
        f"measured just before, is subtracted. {m['pinning']}.\n",
        "| pass | customers rescored | lost to newer writes | seconds | rescored / s | consumer CPU / customer "
        "| of which the sweep | Redis CPU / customer | alerts |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, key in (("sweep alone", "sweep_alone"), ("under classify load", "sweep_under_classify_load")):
        r = sweep.get(key)
        if r:
            lines.append(
                f"| {name} | {r['rescored']:,.0f} | {r['conflicts']:,.0f} | {r['seconds']:.1f} | "
                f"**{r['per_second']:,.0f}** | {r['process_cpu_us_per_customer']:.1f} µs | "
                f"{r.get('sweep_cpu_us_per_customer', r['process_cpu_us_per_customer']):.1f} µs | "
                f"{r['redis_cpu_us_per_customer']:.1f} µs | {r.get('alerts', 0):,.0f} |"
            )
    c = sweep.get("classify")
    if c:
        q, b = c["without_sweep"], c["during_sweep"]
        lines += [
            f"\nClassify at {c['rate']:,.0f} requests/s of random known customers ({c['seconds']:g} s each, latency "
            "from the scheduled send time, `loadtests.openloop`); the window under load lies inside the sweep: "
            f"{'yes' if c['load_window_inside_sweep'] else 'no'}.\n",
            "| classify | p50 | p90 | p99 | p99.9 | failed |",
            "|---|---|---|---|---|---|",
            f"| without a sweep | {_us(q['p50_us'])} | {_us(q['p90_us'])} | {_us(q['p99_us'])} | {_us(q['p999_us'])} "
            f"| {q['errors'] + q['non_200']} |",
            f"| during the sweep | {_us(b['p50_us'])} | {_us(b['p90_us'])} | {_us(b['p99_us'])} | {_us(b['p999_us'])} "
            f"| {b['errors'] + b['non_200']} |",
        ]
    alone = sweep.get("sweep_alone", {})
    lines += [
        "\n| target (issue #19, item 4) | measured | met |",
        "|---|---|---|",
        f"| ≥ 50,000 customers rescored / s per process at 1M customers | {alone.get('per_second', 0):,.0f}/s alone"
        f"{', ' + format(sweep['sweep_under_classify_load']['per_second'], ',.0f') + '/s under load' if 'sweep_under_classify_load' in sweep else ''} "
        f"| {_met(alone.get('per_second', 0) >= 50_000)} |",
    ]
    if c and c.get("p99_ratio") is not None:
        lines.append(
            f"| classify p99 during the sweep ≤ 1.10 × without | × {c['p99_ratio']:.2f} | {_met(c['p99_ratio'] <= 1.10)} |"
        )
    lines.append(
        f"\nRedis memory: {pop['redis_bytes_per_customer']:,.0f} B per customer in all (snapshot hash, phone index, "
        f"histograms, due index), of which the due index {pop['due_index_bytes_per_customer']:,.0f} B."
    )
    return "\n".join(lines) + "\n"


FRESHNESS_TARGET = {"rate": 5000, "p99_ms": 25.0, "idle_cpu": 0.05}


def render_freshness(fr: dict[str, Any]) -> str:
    """Markdown for the freshness benchmark JSON (``python -m loadtests.bench_freshness``)."""
    m, cfg = fr["machine"], fr["config"]
    load = ", ".join(f"{x:.1f}" for x in m["load_average_at_start"])
    lines = [
        "## Freshness: from Kafka's acknowledgement to the first classify read that sees the event "
        "(`python -m loadtests.bench_freshness`)\n",
        f"Run {fr['started_at']} (commit {fr['commit']}) on {m['cpus']} × {m['cpu_model']}; load average at start "
        f"{load}, at the end {fr['load_average_at_end'][0]:.1f} (the machine is shared). Embedded Tansu broker, one "
        f"`StateConsumer` process, {cfg['probes']} probe events per cell, one at a time, each for a new customer, "
        "sent with `acks=all` while a second process sends background events (open loop, 100k customers); a probe "
        "is timed from the broker's acknowledgement until a `StateStore.read_for_decision` of its customer (the "
        "read a classify does, repeated every ~0.5 ms) finds the snapshot. Fetch settings alternated per rate. "
        "Times in ms. *Queued*: the consumer was still on an earlier batch; *fetch*: from the later of the "
        "acknowledgement and the poll's start until the poll returned the event (the broker's hold and the fetch); "
        "*work*: poll returned until the apply script that wrote the customer returned; *read*: until this reader's "
        "next read. *Idle CPU*: the consumer's CPU over "
        f"{cfg['idle_seconds']:g} s without traffic.\n",
        "| ev/s | fetch.min.bytes / max.wait | p50 | p90 | p99 | max | seen | idle CPU | queued p50 / p99 "
        "| fetch p50 / p99 | work p50 / p99 | read p50 | events per batch (median) | worst 1 %: queued + fetch + work |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in fr["cells"]:
        ms, w = c["ms"], c["worst_1pct_mean_ms"]
        idle = c.get("consumer_idle_cpu")
        if c["probes_seen"] < c["probes"]:
            lines.append(
                f"| {c['rate']:,} | {c['fetch_min_bytes']:,} B / {c['fetch_max_wait_ms']} ms | fell behind: "
                f"{c['probes_seen']} of {c['probes']} probes seen within 3 s (a backlog, batches of "
                f"{c['batches'].get('events_p50', 0):,.0f} events; consumer {c['consumer_cpu_under_load']:.0%} of a core) "
                "| | | | | | | | | | | |"
            )
            continue
        lines.append(
            f"| {c['rate']:,} | {c['fetch_min_bytes']:,} B / {c['fetch_max_wait_ms']} ms | {ms['total']['p50']:.1f} | "
            f"{ms['total']['p90']:.1f} | **{ms['total']['p99']:.1f}** | {ms['total']['max']:.1f} | "
            f"{c['probes_seen']}/{c['probes']} | {'-' if idle is None else f'{idle:.1%}'} | "
            f"{ms['queued']['p50']:.1f} / {ms['queued']['p99']:.1f} | {ms['fetch']['p50']:.1f} / {ms['fetch']['p99']:.1f} | "
            f"{ms['work']['p50']:.1f} / {ms['work']['p99']:.1f} | {ms['read']['p50']:.1f} | "
            f"{c['batches'].get('events_p50', 0):,.0f} | {w['queued']:.1f} + {w['fetch']:.1f} + {w['work']:.1f} |"
        )
    lines.append("")
    lines.append(_freshness_targets(fr))
    return "\n".join(lines) + "\n"


def _freshness_targets(fr: dict[str, Any]) -> str:
    default = KafkaSettings()
    mine = [
        c
        for c in fr["cells"]
        if (c["fetch_min_bytes"], c["fetch_max_wait_ms"]) == (default.fetch_min_bytes, default.fetch_max_wait_ms)
    ]
    lines = [
        f"| target (issue #19, item 1), defaults {default.fetch_min_bytes} B / {default.fetch_max_wait_ms} ms "
        "| measured | met |",
        "|---|---|---|",
    ]
    at = next((c for c in mine if c["rate"] == FRESHNESS_TARGET["rate"]), None)
    if at is not None:
        p99 = at["ms"]["total"]["p99"]
        lines.append(f"| p99 ≤ 25 ms at 5,000 ev/s | {p99:.1f} ms | {_met(p99 <= FRESHNESS_TARGET['p99_ms'])} |")
    idle = next((c["consumer_idle_cpu"] for c in mine if c.get("consumer_idle_cpu") is not None), None)
    if idle is not None:
        lines.append(f"| consumer CPU ≤ 5 % when idle | {idle:.1%} | {_met(idle <= FRESHNESS_TARGET['idle_cpu'])} |")
    return "\n".join(lines) + "\n"


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}/s"


def _ratio(value: float, base: float | None) -> str:
    return "–" if not base else f"{value / base:.2f}"


def _us_per_event(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} µs"


def update_file(path: Path, regions: dict[str, str]) -> None:
    """Replace each ``<!-- BEGIN name -->..<!-- END name -->`` region of ``path`` (append missing ones)."""
    text = path.read_text() if path.exists() else _HEADER
    for name, body in regions.items():
        block = f"<!-- BEGIN {name} (generated by python -m loadtests.report) -->\n{body.rstrip()}\n<!-- END {name} -->"
        pattern = re.compile(rf"<!-- BEGIN {re.escape(name)} .*?-->.*?<!-- END {re.escape(name)} -->", re.S)
        found = pattern.search(text)
        text = text[: found.start()] + block + text[found.end() :] if found else text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text.rstrip() + "\n")


def render(report: Path = REPORT, artifacts: Path = ARTIFACTS) -> None:
    """Rewrite the generated regions of ``report`` from the JSON files in ``artifacts``."""
    regions: dict[str, str] = {}
    serve_path = artifacts / "bench_serve.json"
    if serve_path.exists():
        micro_path = artifacts / "bench_micro.json"
        micro = json.loads(micro_path.read_text()) if micro_path.exists() else None
        regions["serve"] = render_serve(json.loads(serve_path.read_text()), micro)
    ingest_path = artifacts / "bench_ingest.json"
    if ingest_path.exists():
        regions["ingest"] = render_ingest(json.loads(ingest_path.read_text()))
    sweep_path = artifacts / "bench_sweep.json"
    if sweep_path.exists():
        regions["sweep"] = render_sweep(json.loads(sweep_path.read_text()))
    freshness_path = artifacts / "bench_freshness.json"
    if freshness_path.exists():
        regions["freshness"] = render_freshness(json.loads(freshness_path.read_text()))
    peer_path = artifacts / "bench_peer.json"
    if peer_path.exists():
        from loadtests.bench_peer import render as render_peer

        regions["peer"] = render_peer(json.loads(peer_path.read_text()))
    update_file(report, regions)


def _run(argv: list[str]) -> None:
    print("$", " ".join(argv[1:]), flush=True)
    subprocess.run(argv, cwd=ROOT, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--render-only", action="store_true", help="only re-render from artifacts/*.json")
    parser.add_argument("--skip-ingest", action="store_true", help="keep artifacts/bench_ingest.json as it is")
    parser.add_argument("--skip-sweep", action="store_true", help="keep artifacts/bench_sweep.json as it is")
    parser.add_argument("--skip-freshness", action="store_true", help="keep artifacts/bench_freshness.json as it is")
    parser.add_argument("--skip-peer", action="store_true", help="keep artifacts/bench_peer.json as it is (Feast)")
    parser.add_argument("--ingest-events", type=int, default=200_000)
    parser.add_argument("--serve-args", default="", help="extra arguments for loadtests.bench_serve")
    args = parser.parse_args()
    t0 = time.monotonic()
    if not args.render_only:
        py = sys.executable
        _run([py, "-m", "loadtests.micro", "--out", str(ARTIFACTS / "bench_micro.json")])
        _run(
            [py, "-m", "loadtests.bench_serve", "--out", str(ARTIFACTS / "bench_serve.json"), *args.serve_args.split()]
        )
        if not args.skip_ingest:
            _run([py, "-m", "loadtests.bench_ingest", "--events", str(args.ingest_events),
                  "--out", str(ARTIFACTS / "bench_ingest.json")])  # fmt: skip
        if not args.skip_sweep:
            _run([py, "-m", "loadtests.bench_sweep", "--out", str(ARTIFACTS / "bench_sweep.json")])
        if not args.skip_freshness:
            _run([py, "-m", "loadtests.bench_freshness", "--out", str(ARTIFACTS / "bench_freshness.json")])
        if not args.skip_peer:  # installs Feast into its own venv the first time (a few minutes)
            _run([py, "-m", "loadtests.bench_peer", "--no-report", "--out", str(ARTIFACTS / "bench_peer.json")])
    render()
    print(f"BENCHMARKS.md regenerated in {time.monotonic() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
