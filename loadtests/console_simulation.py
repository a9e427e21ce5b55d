"""Does a policy simulation over a big customer base slow live decisions? Classify p99 with it running and paused.

Run: ``python -m loadtests.console_simulation`` (defaults: 1M customers, 500 req/s; about 8 min)

1. a private Redis with ``--customers`` customers (:mod:`loadtests.population`);
2. ``router serve`` (one worker, dev key), not pinned: the operating system places the API, Redis,
   the load generator and the simulation process on the cores as it would in production;
3. the console's own path: sign in with the dev key, post a draft (VIP from the 80th percentile)
   to ``/console/policy`` with ``action=simulate``; the worker starts ``router policy simulate --job``
   (SCHED_IDLE, its own Redis client, SCAN + pipelined HMGET, sleeping to stay within
   ``ROUTER_CONSOLE_SIMULATION_CPU_SHARE`` of a core);
4. paired windows of open-loop classify at ``--rate`` (:mod:`loadtests.openloop`: latency from the
   scheduled send time, random customers): one with the simulation running, one with it paused
   (SIGSTOP: it is a process of its own), in alternating order, ``--pairs`` times. A shared machine's
   other load hits both halves of a pair alike, so the pairs compare the simulation, not the noise.

Prints one JSON document (also written to ``--out``). Only 127.0.0.1 is used; every process
started is stopped (the simulation with the API worker that started it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psutil

from loadtests import openloop
from loadtests.population import load_population
from router.devstack.infra import ManagedProcess, free_port, start_redis
from router.settings import Settings, to_env

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def _settings(redis_url: str, cpu_share: float) -> Settings:
    base = Settings()
    r = msgspec.structs.replace
    return r(
        base,
        redis=r(base.redis, url=redis_url, prefix="sim"),
        api=r(base.api, host=HOST, port=free_port(), workers=1, log_level="warning"),
        auth=r(base.auth, dev_mode=True, rate_per_s=1e9, burst=1_000_000_000),
        kafka=r(base.kafka, bootstrap=""),  # decisions need no broker
        console=r(base.console, simulation_cpu_share=cpu_share),
    )


def _serve(settings: Settings, log: Path) -> ManagedProcess:
    env = {**os.environ, **to_env(settings)}
    proc = ManagedProcess("api", [sys.executable, "-m", "router", "serve"], log_path=log, env=env, cwd=ROOT)
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{settings.api.port}/health/ready", timeout=2) as resp:
                if resp.status == 200:
                    return proc
        except OSError:
            pass
        if not proc.running or time.monotonic() > deadline:
            proc.stop(5)
            raise RuntimeError("API did not become ready:\n" + proc.tail(40))
        time.sleep(0.2)


def _window(port: int, customers: int, rate: float, seconds: float) -> dict[str, float]:
    r = openloop.run(HOST, port, rate, seconds, openloop.classify_request(HOST, customers), connections=32)
    return {k: round(r[k], 1) for k in ("achieved_rps", "non_200", "errors", "p50_us", "p99_us", "p999_us", "max_us")}


def _draft(version: str) -> str:
    text = (ROOT / "router" / "policy" / "default.toml").read_text()
    return text.replace("VIP = 90", "VIP = 80").replace('version = "2026-11-25.1"', f'version = "{version}"')


def _start_simulation(client: httpx.Client, draft: str) -> str:
    form = client.get("/console/sign-in").text
    token = _CSRF.search(form).group(1)  # type: ignore[union-attr]
    page = client.post("/console/sign-in", data={"csrf": token, "api_key": "router-dev-key"}, follow_redirects=True)
    csrf = _CSRF.search(page.text).group(1)  # type: ignore[union-attr]
    started = client.post("/console/policy", data={"csrf": csrf, "draft": draft, "action": "simulate", "days": "1"})
    if started.status_code != 303:
        raise RuntimeError(f"simulation not started ({started.status_code}): {started.text[-500:]}")
    return str(started.headers["location"])


def _running(client: httpx.Client, url: str) -> bool:
    return "Finished" not in client.get(url + "/progress").text


def _simulation_pid(api_pid: int) -> int:
    for child in psutil.Process(api_pid).children(recursive=True):
        if "simulate" in child.cmdline():
            return int(child.pid)
    raise RuntimeError("no simulation process under the API worker")


def _progress(client: httpx.Client, url: str) -> str:
    text = client.get(url + "/progress").text
    found = re.search(r"Customers simulated: ([\d,]+)", text)
    return found.group(1) if found else ("finished" if "Finished" in text else "starting")


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # finished (or failed): the pair is dropped below
        os.kill(pid, sig)


def _paired(settings: Settings, api_pid: int, args: argparse.Namespace) -> dict[str, Any]:
    base = f"http://{HOST}:{settings.api.port}"
    pairs: list[dict[str, Any]] = []
    with httpx.Client(base_url=base, timeout=30) as client:
        url = _start_simulation(client, _draft("2026-12-01.1"))
        time.sleep(3)  # the process is up and scanning
        sim = _simulation_pid(api_pid)
        try:
            for i in range(args.pairs):
                pair: dict[str, Any] = {}
                for running in (True, False) if i % 2 == 0 else (False, True):
                    _signal(sim, signal.SIGCONT if running else signal.SIGSTOP)
                    pair["running" if running else "paused"] = _window(
                        settings.api.port, args.customers, args.rate, args.window
                    )
                _signal(sim, signal.SIGCONT)
                pair["simulated_so_far"] = _progress(client, url)
                if not _running(client, url):
                    break  # the last "running" window may have seen its end: keep only whole pairs
                pairs.append(pair)
                print(json.dumps(pair), flush=True)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(sim, signal.SIGCONT)
        rate_note = _progress(client, url)
    p99_on = sorted(p["running"]["p99_us"] for p in pairs)
    p99_off = sorted(p["paused"]["p99_us"] for p in pairs)
    return {
        "pairs": pairs,
        "median_p99_running_us": _median(p99_on),
        "median_p99_paused_us": _median(p99_off),
        "median_p50_running_us": _median(sorted(p["running"]["p50_us"] for p in pairs)),
        "median_p50_paused_us": _median(sorted(p["paused"]["p50_us"] for p in pairs)),
        "pairs_where_running_was_slower_at_p99": sum(p["running"]["p99_us"] > p["paused"]["p99_us"] for p in pairs),
        "customers_simulated_at_the_end": rate_note,
    }


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else round((values[mid - 1] + values[mid]) / 2, 1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    out_dir = Path(args.out).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    redis = start_redis(log_path=out_dir / "console-sim-redis.log")
    try:
        settings = _settings(redis.url, args.cpu_share)
        loaded = load_population(settings, args.customers)
        proc = _serve(settings, out_dir / "console-sim-api.log")
        try:
            _window(settings.api.port, args.customers, args.rate, 5)  # warm-up, not counted
            paired = _paired(settings, proc.pid, args)
        finally:
            proc.stop(10)
        return {
            "customers": args.customers, "rate": args.rate, "window_s": args.window, "cpu_share": args.cpu_share,
            "population_load_s": round(loaded, 1), "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
            "took_s": round(time.monotonic() - started, 1), **paired,
        }  # fmt: skip
    finally:
        redis.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--window", type=float, default=15.0, help="seconds per measurement window")
    parser.add_argument("--pairs", type=int, default=8, help="pairs of windows (simulation running, paused)")
    parser.add_argument("--cpu-share", type=float, default=0.2, help="the console's simulation CPU share")
    parser.add_argument("--out", default="artifacts/console_simulation.json")
    args = parser.parse_args()
    result = run(args)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
