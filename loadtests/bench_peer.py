"""Feast as a side-by-side peer: ``feast serve`` get-online-features against the router's classify.

Run: ``python -m loadtests.bench_peer`` (defaults: 100k customers, 30 features, wrk -c32, 10 s
runs, peer and router alternated 2×; about 4 minutes once Feast's virtualenv exists, a few more
the first time)

In one run:

1. Feast (the ``bench-peer`` extra of pyproject.toml, pinned there) is installed into its own
   virtualenv (``--feast-venv``, default ``~/.cache/router-bench/feast-<version>``), not into the
   project's: its dependencies are many and its pins are its own. Created once, then reused;
2. a Feast feature repo is written to a temporary directory: one entity ``customer_id`` (ids
   ``C%07d``, the ids of :mod:`loadtests.population`), one feature view of 30 float features
   over a parquet file source, the Redis online store on a private redis-server
   (:func:`router.devstack.infra.start_redis`); ``feast apply`` and ``feast materialize`` load
   the customers into it;
3. ``feast serve`` (one worker) is started pinned to core 0; the router's API worker (the
   machinery of :mod:`loadtests.bench_serve`, 100k customers loaded by
   :mod:`loadtests.population` into its own private Redis) likewise on core 0. Both Redis
   servers and wrk share core 1;
4. ``wrk -t1 -c32`` on core 1: ``POST /get-online-features`` for a random customer and all 30
   features (``loadtests/wrk/feast_online.lua``), then ``POST /v1/classify`` for a random
   customer (``loadtests/wrk/random_customer.lua``), alternated ``--repeats`` times in both
   orders; req/s, p50 and p99 of each run, the same-pair ratios (router req/s ÷ Feast req/s;
   Feast p99 ÷ router p99) and their medians;
5. with ``--profile``, py-spy of each server under the same load (py-spy from Feast's venv).

Every Feast command run is printed and kept in the JSON (``--out``, default
``artifacts/bench_peer.json``); the "peer" region of BENCHMARKS.md is re-rendered from it
(``--no-report`` leaves BENCHMARKS.md alone). Only 127.0.0.1 is used; every process started
is stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import psutil

from loadtests import bench_serve
from loadtests.population import load_population
from router.devstack.infra import ManagedProcess, free_port, start_redis

__all__ = [
    "feature_refs",
    "feature_repo_files",
    "main",
    "pair_ratios",
    "parse_wrk",
    "peer_requirements",
    "render",
    "run",
    "summarise",
]

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "loadtests" / "wrk" / "feast_online.lua"
HOST = bench_serve.HOST
SERVER_CORE, LOAD_CORE = bench_serve.SERVER_CORE, bench_serve.LOAD_CORE
PROJECT = "router_peer"
VIEW = "customer_features"
ENTITY_KEY = "customer_id"
TARGETS = {"rps_ratio": 6.0, "p99_ratio": 10.0}  # issue 19: classify ≥ 6× Feast's req/s, p99 ≤ 1/10 of Feast's


# --- pure parts ------------------------------------------------------------------------------------


def peer_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The ``bench-peer`` extra of pyproject.toml: what goes into Feast's virtualenv."""
    data = tomllib.loads(pyproject.read_text())
    reqs: list[str] = data["project"]["optional-dependencies"]["bench-peer"]
    return reqs


def feature_names(features: int) -> list[str]:
    return [f"f{i:02d}" for i in range(features)]


def feature_refs(features: int) -> list[str]:
    """``view:feature`` references of every feature, as get-online-features takes them."""
    return [f"{VIEW}:{name}" for name in feature_names(features)]


def feature_repo_files(redis_port: int, parquet: Path, features: int = 30) -> dict[str, str]:
    """Files by path under the work directory: the feature repo (``repo/feature_store.yaml``,
    ``repo/features.py``) and, outside it (``feast apply`` imports every module of the repo), the
    generator of the offline source (``make_data.py``, run with Feast's Python)."""
    store_yaml = f"""\
project: {PROJECT}
provider: local
registry: data/registry.db
online_store:
  type: redis
  connection_string: "{HOST}:{redis_port}"
offline_store:
  type: file
entity_key_serialization_version: 3
"""
    fields = ",\n".join(f'        Field(name="{name}", dtype=Float32)' for name in feature_names(features))
    features_py = f'''\
"""Written by loadtests.bench_peer: one entity, one feature view of {features} float features."""

from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Float32

customer = Entity(name="customer", join_keys=["{ENTITY_KEY}"], value_type=ValueType.STRING)

source = FileSource(name="customers", path={str(parquet)!r}, timestamp_field="event_timestamp")

{VIEW} = FeatureView(
    name="{VIEW}",
    entities=[customer],
    ttl=timedelta(days=3650),
    online=True,
    source=source,
    schema=[
{fields},
    ],
)
'''
    make_data = f'''\
"""Written by loadtests.bench_peer: the offline source, customers C0000000.. with {features} random floats."""

import sys

import numpy as np
import pandas as pd

customers, out, timestamp = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rng = np.random.default_rng(19)
frame = pd.DataFrame({{name: rng.random(customers, dtype=np.float32) for name in {feature_names(features)!r}}})
frame.insert(0, "{ENTITY_KEY}", [f"C{{i:07d}}" for i in range(customers)])
frame["event_timestamp"] = pd.Timestamp(timestamp)
frame.to_parquet(out, index=False)
'''
    return {"repo/feature_store.yaml": store_yaml, "repo/features.py": features_py, "make_data.py": make_data}


def parse_wrk(stdout: str) -> dict[str, Any]:
    """Figures of one wrk run from the ``WRK_JSON`` line of its output; req/s and errors added."""
    line = next((ln for ln in stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        raise ValueError(f"wrk produced no figures:\n{stdout}")
    figures: dict[str, Any] = json.loads(line[len("WRK_JSON ") :])
    figures["rps"] = figures["requests"] / (figures["duration_us"] / 1e6)
    figures["errors"] = sum(v for k, v in figures.items() if k.startswith("errors_"))
    return figures


def pair_ratios(router: dict[str, Any], feast: dict[str, Any]) -> dict[str, float]:
    """Same-pair ratios: router req/s ÷ Feast req/s, and Feast p99 ÷ router p99 (both: higher is better)."""
    ratios = {
        "rps_ratio": router["rps"] / feast["rps"],
        "p99_ratio": feast["p99_us"] / max(router["p99_us"], 1e-9),
        "p50_ratio": feast["p50_us"] / max(router["p50_us"], 1e-9),
    }
    if "server_cpu_us_per_request" in router and "server_cpu_us_per_request" in feast:
        # What the shared machine blurs least: each server's CPU per request, so the req/s of a
        # dedicated core (1e6 / CPU us per request) for both.
        ratios["cpu_capacity_ratio"] = feast["server_cpu_us_per_request"] / max(
            router["server_cpu_us_per_request"], 1e-9
        )
    return ratios


MAX_DEGRADED_SHARE = 0.01


def degraded_share(run: dict[str, Any]) -> float:
    """Share of a router run's answers that were degraded (a fallback, not a whole decision)."""
    return float(run.get("degraded", 0.0)) / max(1.0, float(run["requests"]))


def summarise(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per server and of the per-pair ratios, with the targets and whether they are met.

    A pair whose router run answered more than 1 % degraded (Redis slower than redis.timeout_ms,
    then the circuit open: cheap fallbacks that would pass for throughput) is left out of the
    medians and counted in ``excluded_pairs``; if every pair is, all are kept and ``valid`` is False.
    """
    kept = [p for p in pairs if degraded_share(p["router"]) <= MAX_DEGRADED_SHARE]
    out: dict[str, Any] = {"excluded_pairs": len(pairs) - len(kept), "valid": bool(kept)}
    pairs = kept or pairs
    for side in ("feast", "router"):
        runs = [p[side] for p in pairs]
        out[side] = {
            k: float(statistics.median(r[k] for r in runs))
            for k in ("rps", "p50_us", "p90_us", "p99_us", "p999_us")
            if all(k in r for r in runs)
        }
        out[side]["errors"] = sum(r.get("errors", 0) for r in runs)
        if all("server_cpu_us_per_request" in r for r in runs):
            out[side]["server_cpu_us_per_request"] = float(
                statistics.median(r["server_cpu_us_per_request"] for r in runs)
            )
    if all("degraded" in p["router"] for p in pairs):
        out["router"]["degraded"] = sum(p["router"]["degraded"] for p in pairs)
    for key in ("rps_ratio", "p99_ratio", "p50_ratio", "cpu_capacity_ratio"):
        values = [p["ratios"][key] for p in pairs if key in p["ratios"]]
        if not values:
            continue
        out[key + "s"] = values
        out[key + "_median"] = float(statistics.median(values))
    out["targets"] = dict(TARGETS)
    out["met"] = {key: out[key + "_median"] >= target for key, target in TARGETS.items()}
    return out


def _us(v: float) -> str:
    return f"{v / 1000:.1f} ms" if v >= 1000 else f"{v:.0f} µs"


def render(result: dict[str, Any]) -> str:
    """The "peer" region of BENCHMARKS.md."""
    m = result["machine"]
    s = result["summary"]
    cfg = result["config"]
    lines = [
        "## Peer: Feast (`python -m loadtests.bench_peer`)",
        "",
        f"Run `{result['command']}` at {result['started_at']} (commit {result['commit']}): "
        f"{m['cpu_model']}, {m['cpus']} cores, Python {m['python']}, Feast {result['feast_version']}; "
        f"load average at start {', '.join(f'{x:.2f}' for x in m['load_average_at_start'])} "
        f"(the machine was shared). Both servers on core {SERVER_CORE}, their Redis servers and "
        f"`wrk -t1 -c{cfg['connections']}` on core {LOAD_CORE}; {cfg['customers']:,} customers each; "
        f"{cfg['duration']:g} s runs, Feast and router alternated {cfg['repeats']}× (both orders); medians.",
        "",
        *(
            [
                f"{s['excluded_pairs']} pair(s) left out: more than {MAX_DEGRADED_SHARE:.0%} of the router's answers "
                "degraded (circuit open after Redis replies slower than redis.timeout_ms); medians of the rest.",
                "",
            ]
            if s.get("excluded_pairs") and s.get("valid", True)
            else []
        ),
        *(
            ["**Every pair had more than 1 % degraded router answers: these figures are not whole decisions.**", ""]
            if not s.get("valid", True)
            else []
        ),
        "| | req/s | p50 | p90 | p99 | server CPU per request | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    names = {
        "feast": f"Feast `feast serve --max-requests {cfg.get('feast_max_requests', 1000)}`, get-online-features, "
        f"{cfg['features']} features",
        "router": "router `POST /v1/classify` (a whole decision)",
    }
    for side in ("feast", "router"):
        r = s[side]
        cpu = r.get("server_cpu_us_per_request")
        lines.append(
            f"| {names[side]} | {r['rps']:,.0f} | {_us(r['p50_us'])} | {_us(r['p90_us'])} | {_us(r['p99_us'])} "
            f"| {_us(cpu) if cpu is not None else '-'} | {r['errors']:,}"
            + (f" ({r['degraded']:,.0f} degraded)" if side == "router" and "degraded" in r else "")
            + " |"
        )
    lines += [
        "",
        "| ratio (same pair, median) | per pair | measured | target (issue 19) | |",
        "|---|---|---:|---:|---|",
        f"| router req/s ÷ Feast req/s | {', '.join(f'×{v:.2f}' for v in s['rps_ratios'])} "
        f"| ×{s['rps_ratio_median']:.2f} | ≥ ×{TARGETS['rps_ratio']:g} | {'met' if s['met']['rps_ratio'] else 'missed'} |",
        f"| Feast p99 ÷ router p99 | {', '.join(f'×{v:.2f}' for v in s['p99_ratios'])} "
        f"| ×{s['p99_ratio_median']:.2f} (router p99 = 1/{s['p99_ratio_median']:.1f} of Feast's) "
        f"| ≥ ×{TARGETS['p99_ratio']:g} (1/10) | {'met' if s['met']['p99_ratio'] else 'missed'} |",
    ]
    if "cpu_capacity_ratio_median" in s:
        lines.append(
            f"| Feast CPU per request ÷ router CPU per request (req/s of a dedicated core) "
            f"| {', '.join(f'×{v:.2f}' for v in s['cpu_capacity_ratios'])} | ×{s['cpu_capacity_ratio_median']:.2f} "
            f"| (≥ ×{TARGETS['rps_ratio']:g}) | {'met' if s['cpu_capacity_ratio_median'] >= TARGETS['rps_ratio'] else 'missed'} |"
        )
    lines += [
        "",
        f"Feast setup: {result['feast_setup']['materialize_seconds']:.1f} s to materialize "
        f"{cfg['customers']:,} customers; router population loaded in {result['router_load_seconds']:.1f} s.",
        "The Feast commands, as run (repo in a temporary directory):",
        "",
        "```",
        *result["feast_commands"],
        "```",
    ]
    for side in ("router", "feast"):
        prof = result.get("profiles", {}).get(side)
        if not prof or "by_library" not in prof:
            continue
        shares = ", ".join(f"{name} {share:g} %" for name, share in prof["by_library"][:8])
        lines += [
            "",
            f"Profile of {side} under the same load (py-spy --gil: samples holding the GIL, {prof['samples']:,} samples, own time by library): {shares}.",
        ]
    return "\n".join(lines)


def library_shares(raw: str, top: int = 12) -> dict[str, Any]:
    """Own time by top-level package of the leaf frame, from py-spy's collapsed stacks (``a;b;c count``)."""
    areas: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        leaf = stack.split(";")[-1]
        # py-spy shortens paths to the part under site-packages or the stdlib: "fastapi/routing.py:381"
        path = leaf.rsplit(" (", 1)[-1].rstrip(")").rsplit(":", 1)[0] if " (" in leaf else leaf
        if "site-packages/" in path:
            path = path.split("site-packages/", 1)[1]
        area = path.split("/", 1)[0] if "/" in path else path.removesuffix(".py")
        areas[area] = areas.get(area, 0) + count
    ranked = sorted(areas.items(), key=lambda kv: -kv[1])[:top]
    return {"samples": total, "by_library": [[name, round(100.0 * c / max(1, total), 1)] for name, c in ranked]}


# --- Feast: its venv, its repo, its server ---------------------------------------------------------


def ensure_feast_venv(venv: Path, requirements: list[str], commands: list[str]) -> Path:
    """Feast's own virtualenv at ``venv`` (created and installed once); its ``bin`` directory."""
    marker = venv / ".installed"
    wanted = "\n".join(requirements)
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(venv / "bin" / "pip"), "install", "--quiet", *requirements],
    ]
    if marker.exists() and marker.read_text() == wanted:
        commands.extend(shlex.join(argv) + "   # done before: the venv is reused" for argv in steps)
        return venv / "bin"
    for argv in steps:
        print("$", shlex.join(argv), flush=True)
        commands.append(shlex.join(argv))
        subprocess.run(argv, check=True, timeout=1800)
    marker.write_text(wanted)
    return venv / "bin"


def _feast_run(bin_dir: Path, repo: Path, args: list[str], commands: list[str], timeout: float = 600) -> str:
    argv = [str(bin_dir / "feast"), "-c", str(repo), *args]
    commands.append(shlex.join(["feast", "-c", str(repo), *args]))
    print("$", commands[-1], flush=True)
    done = subprocess.run(argv, cwd=repo, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{commands[-1]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return done.stdout


def feast_setup(
    bin_dir: Path, work: Path, redis_port: int, customers: int, features: int, commands: list[str]
) -> dict[str, Any]:
    """Write the feature repo, generate the offline source, ``feast apply`` and ``feast materialize``."""
    repo = work / "repo"
    (repo / "data").mkdir(parents=True, exist_ok=True)
    parquet = work / "customers.parquet"
    for name, text in feature_repo_files(redis_port, parquet, features).items():
        (work / name).write_text(text)
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    gen = [str(bin_dir / "python"), "make_data.py", str(customers), str(parquet), at.isoformat()]
    commands.append(shlex.join(["python", *gen[1:]]) + "   # Feast's venv: pandas writes the parquet source")
    print("$", commands[-1], flush=True)
    subprocess.run(gen, cwd=work, check=True, timeout=300)
    _feast_run(bin_dir, repo, ["apply"], commands)
    t0 = time.perf_counter()
    start = (at - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
    end = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    _feast_run(bin_dir, repo, ["materialize", start, end], commands, timeout=900)
    return {"materialize_seconds": time.perf_counter() - t0}


def _post(port: int, path: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(
        f"http://{HOST}:{port}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def probe_feast(port: int, features: int, customer: str = "C0000042") -> dict[str, Any]:
    """One get-online-features answer: every feature present for a known customer?"""
    answer = _post(
        port, "/get-online-features", {"features": feature_refs(features), "entities": {ENTITY_KEY: [customer]}}
    )
    results = answer["results"]
    statuses = [r["statuses"][0] for r in results[1:]]
    values = [r["values"][0] for r in results[1:]]
    present = sum(1 for st, v in zip(statuses, values, strict=True) if st == "PRESENT" and v is not None)
    return {"features_present": present, "features_asked": features, "example_value": values[0] if values else None}


@contextlib.contextmanager
def feast_server(
    bin_dir: Path, repo: Path, log: Path, commands: list[str], max_requests: int
) -> Iterator[tuple[ManagedProcess, int]]:
    """``feast serve`` (one worker) on core 0 until it answers; yields the process and its port.

    ``max_requests``: gunicorn recycles Feast's worker after that many requests (Feast's default
    1000; 0 turns it off, the faster and so stricter peer: a recycle costs Feast a latency spike).
    """
    port = free_port()
    args = ["serve", "--host", HOST, "--port", str(port), "--workers", "1", "--no-access-log",
            "--max-requests", str(max_requests)]  # fmt: skip
    commands.append(shlex.join(bench_serve._pinned(SERVER_CORE, ["feast", "-c", str(repo), *args])))
    print("$", commands[-1], flush=True)
    argv = bench_serve._pinned(SERVER_CORE, [str(bin_dir / "feast"), "-c", str(repo), *args])
    proc = ManagedProcess(
        "feast",
        argv,
        log_path=log,
        cwd=repo,
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"},
    )
    try:
        bench_serve.wait_until_ok(f"http://{HOST}:{port}/health", proc, "feast serve", timeout=120, interval=0.2)
        yield proc, port
    finally:
        proc.stop(10)


def _tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its descendants (gunicorn's master and worker)."""
    total = 0.0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
    return total


def feast_wrk(
    wrk: str, port: int, customers: int, features: int, duration: float, connections: int, pid: int
) -> dict[str, Any]:
    """One closed-loop wrk run on core 1 against get-online-features; figures and server CPU per request."""
    env = {**os.environ, "BENCH_CUSTOMERS": str(customers), "BENCH_FEAST_FEATURES": ",".join(feature_refs(features))}
    argv = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", "-s", str(LUA),
            f"http://{HOST}:{port}"]  # fmt: skip
    cpu0 = _tree_cpu(pid)
    out = subprocess.run(
        bench_serve._pinned(LOAD_CORE, argv), env=env, capture_output=True, text=True, timeout=duration + 60
    )
    figures = parse_wrk(out.stdout)
    figures["kind"] = "feast"
    figures["server_cpu_us_per_request"] = (_tree_cpu(pid) - cpu0) / max(1, figures["requests"]) * 1e6
    return figures


def _profile(
    py_spy: Path, pid: int, seconds: float, out: Path, load_argv: list[str], env: dict[str, str]
) -> dict[str, Any]:
    """py-spy of ``pid`` for ``seconds`` while ``load_argv`` (wrk) runs on core 1."""
    if not py_spy.exists():
        return {"error": f"no py-spy at {py_spy}"}
    load = subprocess.Popen(
        bench_serve._pinned(LOAD_CORE, load_argv), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(1)
        argv = [str(py_spy), "record", "-p", str(pid), "-d", str(max(1, round(seconds))), "-r", "200", "--nonblocking",
                "--gil", "--format", "raw", "-o", str(out)]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
        if done.returncode != 0:
            return {"error": f"py-spy failed: {done.stderr.strip()[-400:]}"}
    finally:
        load.terminate()
        load.wait(10)
    return {**library_shares(out.read_text()), "raw": str(out)}


def _worker_pid(pid: int) -> int:
    """The process that serves: the deepest descendant of ``pid`` (gunicorn's worker), else ``pid``."""
    with contextlib.suppress(psutil.Error):
        children = psutil.Process(pid).children(recursive=True)
        pythons = [c for c in children if "python" in c.name() or "feast" in " ".join(c.cmdline())]
        if pythons:
            return pythons[-1].pid
    return pid


# --- the run ----------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    wrk = bench_serve.ensure_wrk()
    out_dir = Path(args.out).parent / "bench_peer"
    out_dir.mkdir(parents=True, exist_ok=True)
    commands: list[str] = []
    requirements = peer_requirements()
    bin_dir = ensure_feast_venv(Path(args.feast_venv).expanduser(), requirements, commands)
    version = subprocess.run(
        [str(bin_dir / "python"), "-c", "import feast; print(feast.__version__)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    result: dict[str, Any] = {
        "command": "python -m loadtests.bench_peer" + (" " + shlex.join(args.argv) if args.argv else ""),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": bench_serve._cpu_model(),
            "python": sys.version.split()[0],
            "load_average_at_start": os.getloadavg(),
        },
        "commit": bench_serve._commit(),
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "argv")},
        "feast_version": version,
        "feast_requirements": requirements,
        "pairs": [],
    }
    customers, features, duration, connections = args.customers, args.features, args.duration, args.connections
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="feast-peer-")))
        repo = work / "repo"
        feast_redis = stack.enter_context(start_redis())
        if feast_redis.process is not None:
            bench_serve._pin_pid(feast_redis.process.pid, LOAD_CORE)
        print(f"Feast {version}: feature repo in {repo}, materializing {customers:,} customers", flush=True)
        result["feast_setup"] = feast_setup(bin_dir, work, feast_redis.port, customers, features, commands)
        print(f"  materialized in {result['feast_setup']['materialize_seconds']:.1f} s", flush=True)

        router_redis = stack.enter_context(start_redis())
        if router_redis.process is not None:
            bench_serve._pin_pid(router_redis.process.pid, LOAD_CORE)
        settings = bench_serve.bench_settings(router_redis.url, "bench")
        if args.redis_timeout_ms is not None:
            settings = msgspec.structs.replace(
                settings, redis=msgspec.structs.replace(settings.redis, timeout_ms=args.redis_timeout_ms)
            )
        print(f"router: loading {customers:,} customers", flush=True)
        result["router_load_seconds"] = load_population(settings, customers)

        feast_proc, feast_port = stack.enter_context(
            feast_server(bin_dir, repo, out_dir / "feast.log", commands, args.feast_max_requests)
        )
        api = stack.enter_context(bench_serve.api_server(settings, out_dir / "api.log"))
        result["feast_probe"] = probe_feast(feast_port, features)
        result["router_probe"] = bench_serve.probe_clv(settings.api.port)
        print(f"  probes: feast {result['feast_probe']}, router {result['router_probe']}", flush=True)

        def feast_once(seconds: float) -> dict[str, Any]:
            return feast_wrk(wrk, feast_port, customers, features, seconds, connections, feast_proc.pid)

        def router_once(seconds: float) -> dict[str, Any]:
            return bench_serve.wrk_run(wrk, settings.api.port, "classify", customers, seconds, connections, api.pid)

        feast_once(min(3.0, duration))  # warm-up: caches, registry, JIT-less but lazy imports
        router_once(min(3.0, duration))
        for i in range(args.repeats):
            pair: dict[str, Any] = {}
            for side in ("feast", "router") if i % 2 == 0 else ("router", "feast"):
                pair[side] = feast_once(duration) if side == "feast" else router_once(duration)
            pair["ratios"] = pair_ratios(pair["router"], pair["feast"])
            pair["load_average"] = os.getloadavg()
            result["pairs"].append(pair)
            f, r, q = pair["feast"], pair["router"], pair["ratios"]
            print(
                f"  pair {i + 1}/{args.repeats}: Feast {f['rps']:,.0f} req/s p50 {_us(f['p50_us'])} p99 {_us(f['p99_us'])}; "
                f"router {r['rps']:,.0f} req/s p50 {_us(r['p50_us'])} p99 {_us(r['p99_us'])} "
                f"({r['degraded']:,.0f} degraded); req/s ×{q['rps_ratio']:.2f}, p99 Feast/router ×{q['p99_ratio']:.2f}; "
                f"load {pair['load_average'][0]:.2f}",
                flush=True,
            )
        result["summary"] = summarise(result["pairs"])
        if args.profile:  # after the measured pairs, so it cannot disturb them
            py_spy = bin_dir / "py-spy"
            seconds = args.profile_seconds
            load_s = f"-d{round(seconds) + 3}s"
            result["profiles"] = {
                "router": _profile(
                    py_spy, api.pid, seconds, out_dir / "router.pyspy.txt",
                    [wrk, "-t1", f"-c{connections}", load_s, "-s", str(bench_serve.LUA), f"http://{HOST}:{settings.api.port}"],
                    {**os.environ, "BENCH_KIND": "classify", "BENCH_CUSTOMERS": str(customers)},
                ),
                "feast": _profile(
                    py_spy, _worker_pid(feast_proc.pid), seconds, out_dir / "feast.pyspy.txt",
                    [wrk, "-t1", f"-c{connections}", load_s, "-s", str(LUA), f"http://{HOST}:{feast_port}"],
                    {**os.environ, "BENCH_CUSTOMERS": str(customers), "BENCH_FEAST_FEATURES": ",".join(feature_refs(features))},
                ),
            }  # fmt: skip
            for side, prof in result["profiles"].items():
                print(f"  profile {side}: {prof.get('by_library', prof.get('error'))}", flush=True)
        result["load_average_at_end"] = os.getloadavg()
    result["feast_commands"] = commands
    result["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=30, help="features in Feast's feature view")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, default=2, help="Feast/router pairs, alternating order")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (both servers)")
    parser.add_argument(
        "--feast-max-requests",
        type=int,
        default=0,
        help="feast serve --max-requests: worker recycled after so many requests (Feast's default 1000; 0: never)",
    )
    parser.add_argument(
        "--redis-timeout-ms",
        type=int,
        default=None,
        help="router's redis.timeout_ms (default: the setting's, 50); beyond it a decision is degraded",
    )
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True, help="py-spy of both")
    parser.add_argument("--profile-seconds", type=float, default=8.0)
    parser.add_argument(
        "--feast-venv",
        default=str(Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "router-bench" / "feast-0.67"),
        help="Feast's own virtualenv (created when missing)",
    )
    parser.add_argument("--report", action=argparse.BooleanOptionalAction, default=True, help="update BENCHMARKS.md")
    parser.add_argument("--out", default="artifacts/bench_peer.json")
    raw = sys.argv[1:] if argv is None else argv
    parser.add_argument("--render-only", action="store_true", help="re-render BENCHMARKS.md from --out")
    args = parser.parse_args(raw)
    args.argv = raw
    if args.render_only:
        from loadtests.report import REPORT, update_file

        result = json.loads(Path(args.out).read_text())
        for pair in result["pairs"]:
            pair["ratios"] = pair_ratios(pair["router"], pair["feast"])
        result["summary"] = summarise(result["pairs"])
        update_file(REPORT, {"peer": render(result)})
        return
    t0 = time.monotonic()
    result = run(args)
    result["wall_seconds"] = time.monotonic() - t0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("Feast commands used:", *result["feast_commands"], sep="\n  ", flush=True)
    s = result["summary"]
    print(
        f"medians: Feast {s['feast']['rps']:,.0f} req/s p99 {_us(s['feast']['p99_us'])}; router {s['router']['rps']:,.0f} "
        f"req/s p99 {_us(s['router']['p99_us'])}; router/Feast req/s ×{s['rps_ratio_median']:.2f} (target ×6), "
        f"Feast/router p99 ×{s['p99_ratio_median']:.2f} (target ×10)",
        flush=True,
    )
    if args.report:
        from loadtests.report import REPORT, update_file

        update_file(REPORT, {"peer": render(result)})
        print(f"updated the peer region of {REPORT}", flush=True)
    print(f"wrote {args.out} in {result['wall_seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
