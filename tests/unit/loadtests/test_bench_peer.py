"""The pure parts of loadtests.bench_peer: no Feast, no wrk, no Redis (the run itself needs Feast's venv)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from loadtests import bench_peer

WRK_OUT = """Running 10s test @ http://127.0.0.1:4000
  1 threads and 32 connections
WRK_JSON {"requests":5870,"duration_us":10003000,"bytes":1,"errors_connect":0,"errors_read":0,"errors_write":0,"errors_status":2,"errors_timeout":1,"mean_us":54000.0,"max_us":300000,"p50_us":40000,"p90_us":90000,"p99_us":200000,"p999_us":250000}
"""


def test_parse_wrk_reads_the_json_line_and_adds_rate_and_errors() -> None:
    figures = bench_peer.parse_wrk(WRK_OUT)
    assert figures["requests"] == 5870
    assert figures["rps"] == pytest.approx(5870 / 10.003)
    assert figures["errors"] == 3
    assert figures["p99_us"] == 200000


def test_parse_wrk_without_figures_says_so() -> None:
    with pytest.raises(ValueError, match="no figures"):
        bench_peer.parse_wrk("Running 10s test\nconnection refused\n")


def _run(rps: float, p50: float, p99: float, **extra: float) -> dict[str, float]:
    return {
        "rps": rps,
        "p50_us": p50,
        "p90_us": p99 / 2,
        "p99_us": p99,
        "p999_us": p99 * 2,
        "errors": 0,
        "requests": rps * 10,
        **extra,
    }


def test_pair_ratios_are_router_over_feast_for_rate_and_feast_over_router_for_latency() -> None:
    ratios = bench_peer.pair_ratios(_run(3000, 5000, 20000), _run(500, 40000, 200000))
    assert ratios["rps_ratio"] == pytest.approx(6.0)
    assert ratios["p99_ratio"] == pytest.approx(10.0)
    assert ratios["p50_ratio"] == pytest.approx(8.0)


def test_summarise_takes_medians_of_same_pair_ratios_and_checks_the_targets() -> None:
    pairs = []
    for router_rps, feast_rps in ((3000, 500), (2000, 500), (2500, 500)):
        pair = {"router": _run(router_rps, 5000, 20000, degraded=1), "feast": _run(feast_rps, 40000, 180000)}
        pair["ratios"] = bench_peer.pair_ratios(pair["router"], pair["feast"])
        pairs.append(pair)
    s = bench_peer.summarise(pairs)
    assert s["rps_ratios"] == pytest.approx([6.0, 4.0, 5.0])
    assert s["rps_ratio_median"] == pytest.approx(5.0)
    assert s["p99_ratio_median"] == pytest.approx(9.0)
    assert s["met"] == {"rps_ratio": False, "p99_ratio": False}
    assert s["router"]["rps"] == 2500
    assert s["router"]["degraded"] == 3


def test_feature_repo_files_describe_one_entity_and_a_view_of_the_asked_features(tmp_path: Path) -> None:
    files = bench_peer.feature_repo_files(6399, tmp_path / "customers.parquet", features=30)
    assert set(files) == {"repo/feature_store.yaml", "repo/features.py", "make_data.py"}
    store = files["repo/feature_store.yaml"]
    assert 'connection_string: "127.0.0.1:6399"' in store
    assert "type: redis" in store
    tree = ast.parse(files["repo/features.py"])  # valid Python, as feast apply imports it
    fields = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "Field"]
    assert len(fields) == 30
    assert 'join_keys=["customer_id"]' in files["repo/features.py"]
    assert str(tmp_path / "customers.parquet") in files["repo/features.py"]
    ast.parse(files["make_data.py"])
    # the generator lives outside the repo: feast apply imports every module inside it
    assert not files["make_data.py"].startswith("repo/")


def test_feature_refs_match_the_view_and_the_wrk_script_takes_them() -> None:
    refs = bench_peer.feature_refs(30)
    assert len(refs) == 30 and refs[0] == "customer_features:f00" and refs[-1] == "customer_features:f29"
    assert "BENCH_FEAST_FEATURES" in bench_peer.LUA.read_text()


def test_peer_extra_pins_feast_and_is_not_part_of_dev() -> None:
    reqs = bench_peer.peer_requirements()
    assert any(r.startswith("feast[redis]==0.67") for r in reqs)
    import tomllib

    extras = tomllib.loads((bench_peer.ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not any("feast" in r or "bench-peer" in r for r in extras["dev"])


def test_library_shares_group_leaf_frames_by_package() -> None:
    raw = "\n".join(
        [
            "main (router/cli.py:3);handle (litestar/app.py:10);decode (msgspec/json.py:4) 3",
            "main (router/cli.py:3);classify (router/serving/decisions.py:9) 1",
            "<module> (feast:8);wait (threading.py:320) 1",
        ]
    )
    shares = bench_peer.library_shares(raw)
    assert shares["samples"] == 5
    assert shares["by_library"] == [["msgspec", 60.0], ["router", 20.0], ["threading", 20.0]]


def test_render_names_the_targets_and_the_feast_commands() -> None:
    pairs = []
    for _ in range(2):
        pair = {"router": _run(2400, 9000, 36000, degraded=0), "feast": _run(590, 50000, 220000)}
        pair["ratios"] = bench_peer.pair_ratios(pair["router"], pair["feast"])
        pairs.append(pair)
    result = {
        "command": "python -m loadtests.bench_peer",
        "started_at": "2026-12-06T20:00:00Z",
        "commit": "abc123",
        "machine": {"cpu_model": "Some CPU", "cpus": 2, "python": "3.11.7", "load_average_at_start": [4.0, 4.5, 4.7]},
        "feast_version": "0.67.0",
        "config": {
            "feast_max_requests": 0,
            "connections": 32,
            "customers": 100_000,
            "duration": 10.0,
            "repeats": 2,
            "features": 30,
        },
        "summary": bench_peer.summarise(pairs),
        "feast_setup": {"materialize_seconds": 30.0},
        "router_load_seconds": 12.0,
        "feast_commands": ["feast -c /tmp/x/repo apply", "taskset -c 0 feast -c /tmp/x/repo serve"],
    }
    text = bench_peer.render(json.loads(json.dumps(result)))
    assert "×4.07" in text and "≥ ×6" in text and "missed" in text
    assert "taskset -c 0 feast -c /tmp/x/repo serve" in text
    assert "load average at start 4.00, 4.50, 4.70" in text


def test_pairs_with_degraded_router_answers_are_left_out_of_the_medians() -> None:
    pairs = []
    for router_rps, degraded in ((3000, 0), (9000, 20000), (2000, 5)):
        router = _run(router_rps, 5000, 20000, degraded=degraded)
        pair = {"router": router, "feast": _run(500, 40000, 180000)}
        pair["ratios"] = bench_peer.pair_ratios(pair["router"], pair["feast"])
        pairs.append(pair)
    s = bench_peer.summarise(pairs)
    assert s["excluded_pairs"] == 1 and s["valid"]
    assert s["rps_ratios"] == pytest.approx([6.0, 4.0])
    assert s["router"]["rps"] == 2500
    everything_degraded = bench_peer.summarise(pairs[1:2])
    assert not everything_degraded["valid"] and everything_degraded["rps_ratios"] == pytest.approx([18.0])
