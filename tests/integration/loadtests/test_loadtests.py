"""The benchmark scripts cannot rot: the serve benchmark runs end to end in a tiny configuration.

Real everything (private Redis, the API under uvicorn, wrk, the open-loop generator), just
short: 1k customers, one-second runs. It asserts the figures BENCHMARKS.md is made of exist
and that no request failed, not how fast anything was (that is what the benchmark reports).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests import report

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.timeout(120)
def test_bench_serve_tiny_run_produces_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench_serve.json"
    subprocess.run(
        [sys.executable, "-m", "loadtests.bench_serve", "--customers", "1000", "--duration", "1", "--repeats", "1",
         "--rates", "200", "--open-duration", "1", "--no-profile", "--out", str(out)],
        cwd=ROOT, check=True, timeout=110, capture_output=True,
    )  # fmt: skip
    result = json.loads(out.read_text())
    (pop,) = result["populations"]
    assert pop["customers"] == 1000
    sat = pop["saturation"]
    for kind in ("floor", "classify", "screenpop", "handoff"):
        assert sat[kind]["rps"] > 0 and sat[kind]["errors"] == 0, (kind, sat[kind])
        assert 0 < sat[kind]["p50_us"] <= sat[kind]["p99_us"]
    assert sat["classify_to_floor_rps_ratio_median"] > 0
    assert pop["probe"]["clv_percentile_available"], pop["probe"]  # decisions were made with value
    assert sat["classify"]["degraded"] >= 0
    by_kind = {r["kind"]: r for r in pop["open_loop"]}
    assert set(by_kind) == {"floor", "classify"}
    for r in by_kind.values():
        assert r["completed"] == r["scheduled"] == 200 and r["non_200"] == 0 and r["errors"] == 0
        assert not math.isnan(r["p99_us"])
    server = by_kind["classify"]["server"]
    assert server["router_decision_duration_seconds|"]["count"] == 200
    assert server["router_redis_duration_seconds|op=read_customer"]["p50_us"] > 0
    assert 20 * 2**20 < pop["rss_bytes"] < 2**30
    assert pop["redis"]["bytes_per_customer"] > 100

    # and the report renders from it, keeping sections it does not own
    (tmp_path / "bench_serve.json").write_text(out.read_text())
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n## Soak\n\nkept\n")
    report.render(md, tmp_path)
    text = md.read_text()
    assert "## Soak\n\nkept" in text and "req/s ÷ floor" in text and "Targets of issue #7" in text


@pytest.mark.timeout(180)
def test_bench_ingest_tiny_run_produces_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench_ingest.json"
    subprocess.run(
        [sys.executable, "-m", "loadtests.bench_ingest", "--events", "3000", "--customers", "2000", "300", "--batch", "200",
         "--processes", "2", "--out", str(out)],
        cwd=ROOT, check=True, timeout=170, capture_output=True,
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert [r["customers_population"] for r in result["runs"]] == [2000, 300]
    for r in result["runs"]:
        assert r["router_applied_committed_events_per_s"] > 0 and r["raw_consume_events_per_s"] > 0
        # folding and scoring cost several times what decoding does: the compute ceiling costs more CPU
        assert 0 < r["decode_cpu_us_per_event"] < r["compute_cpu_us_per_event"]
        # two `router consume` processes in one group applied every event (the wait ends only then)
        assert [g["processes"] for g in r["groups"]] == [2] and r["groups"][0]["events_per_s"] > 0
        assert r["consumer_cpu_us_per_event"] > 0 and r["redis_cpu_us_per_event"] > 0
        assert 100 < r["memory_usage_median_bytes"] < 2048
    # 300 customers with ~10 events each: after its first batch the consumer reads them from its cache
    assert result["runs"][1]["events_per_customer"] > 5
    assert result["runs"][1]["record_cache_hit_rate"] > 0.5 > result["runs"][0]["record_cache_hit_rate"]
    assert 300 < result["heavy_customer_memory_usage_bytes"] < 2048  # stored compressed: under the 2 KB bound
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n## Soak\n\nkept\n")
    (tmp_path / "bench_ingest.json").write_text(out.read_text())
    report.render(md, tmp_path)
    text = md.read_text()
    assert "## Soak\n\nkept" in text and "consumer CPU / event" in text and "Target of issue #3" in text
    assert "compute ceiling" in text and "Scale-out" in text


@pytest.mark.timeout(240)
def test_bench_sweep_tiny_run_produces_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench_sweep.json"
    subprocess.run(
        [sys.executable, "-m", "loadtests.bench_sweep", "--customers", "3000", "--seconds", "1", "--rate", "100",
         "--interval", "0.5", "--out", str(out)],
        cwd=ROOT, check=True, timeout=230, capture_output=True,
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert result["population"]["due_at_start"] == 3000  # scored two days ago: every one due
    assert 0 < result["population"]["due_index_bytes_per_customer"] < 300
    for name in ("sweep_alone", "sweep_under_classify_load"):
        sweep = result[name]
        assert sweep["rescored"] == 3000 and sweep["conflicts"] == 0, (name, sweep)
        assert sweep["per_second"] > 0 and sweep["process_cpu_us_per_customer"] > 0
    for run in (result["classify"]["without_sweep"], result["classify"]["during_sweep"]):
        assert run["completed"] == run["scheduled"] == 100 and run["non_200"] == 0 and run["errors"] == 0
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n## Soak\n\nkept\n")
    (tmp_path / "bench_sweep.json").write_text(out.read_text())
    report.render(md, tmp_path)
    text = md.read_text()
    assert "## Soak\n\nkept" in text and "rescored / s" in text and "issue #19, item 4" in text


@pytest.mark.timeout(180)
def test_bench_freshness_tiny_run_produces_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench_freshness.json"
    subprocess.run(
        [sys.executable, "-m", "loadtests.bench_freshness", "--rates", "0", "300", "--configs", "1:25", "65536:50",
         "--probes", "6", "--idle-seconds", "0.5", "--warmup", "0.5", "--workdir", str(tmp_path), "--out", str(out)],
        cwd=ROOT, check=True, timeout=170, capture_output=True,
    )  # fmt: skip
    result = json.loads(out.read_text())
    cells = result["cells"]
    assert [(c["rate"], c["fetch_min_bytes"]) for c in cells] == [(0, 1), (0, 65536), (300, 65536), (300, 1)]
    for c in cells:
        assert c["probes_seen"] == c["probes_traced"] == 6, c  # every probe seen, and found in the consumer's trace
        for part in ("total", "queued", "fetch", "work", "read"):
            assert not math.isnan(c["ms"][part]["p99"]), (part, c)
        assert c["ms"]["total"]["p50"] > 0 and c["ms"]["work"]["p50"] > 0 and c["batches"]["batches"] > 0
        assert (c["consumer_idle_cpu"] is not None) == (c["rate"] == 0)
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n## Soak\n\nkept\n")
    (tmp_path / "bench_freshness.json").write_text(out.read_text())
    report.render(md, tmp_path)
    text = md.read_text()
    assert "## Soak\n\nkept" in text and "Freshness" in text and "issue #19, item 1" in text


@pytest.mark.timeout(150)
def test_bench_catchup_tiny_run_catches_up_every_event(tmp_path: Path) -> None:
    out = tmp_path / "bench_catchup.json"
    subprocess.run(
        [sys.executable, "-m", "loadtests.bench_catchup", "--customers", "1000", "--events", "5000",
         "--batch", "250", "--timeout", "90", "--out", str(out)],
        cwd=ROOT, check=True, timeout=140, capture_output=True,
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert (result["customers"], result["events"]) == (1000, 5000)
    (run,) = result["runs"]
    assert run["processes"] == 1
    # the run ends only once the offsets stored with the state cover all 5,000 events
    assert 0 < run["startup_seconds"] < run["catch_up_seconds"]
    assert run["applying_events_per_s"] > 0 and run["consumer_cpu_us_per_event"] > 0
    assert run["redis_cpu_us_per_event"] > 0 and run["load_seconds"] > 0 and run["produce_seconds"] > 0
