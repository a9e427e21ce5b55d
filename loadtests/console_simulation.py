"""Does a policy simulation over a big customer base slow live decisions? Classify p99 with and without one.

Run: ``python -m loadtests.console_simulation`` (defaults: 1M customers, 500 req/s; about 6-8 min)

1. a private Redis with ``--customers`` customers (:mod:`loadtests.population`);
2. ``router serve`` (one worker, dev key), not pinned: the operating system places the API, Redis,
   the load generator and the simulation process on the two cores as it would in production;
3. baseline: open-loop classify at ``--rate`` for ``--windows`` windows of ``--window`` seconds
   (:mod:`loadtests.openloop`: latency from the scheduled send time, random customers);
4. the console's own path: sign in with the dev key, post a draft (VIP from the 80th percentile)
   to ``/console/policy`` with ``action=simulate``; the worker starts ``router policy simulate --job``
   (niced, its own Redis client, SCAN + pipelined HMGET, sleeping to stay within
   ``ROUTER_CONSOLE_SIMULATION_CPU_SHARE`` of a core); open-loop windows run back to back until
   the job reports done, each counted only if the job was still running when it ended;
5. the same once more with ``--cpu-share 1.0`` (no sleeping; still niced and in its own process).

Prints one JSON document (also written to ``--out``). Only 127.0.0.1 is used; every process
started is stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import msgspec

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


def _during(settings: Settings, customers: int, rate: float, window: float, draft: str) -> dict[str, Any]:
    base = f"http://{HOST}:{settings.api.port}"
    with httpx.Client(base_url=base, timeout=30) as client:
        started = time.monotonic()
        url = _start_simulation(client, draft)
        windows = []
        while _running(client, url):
            result = _window(settings.api.port, customers, rate, window)
            if _running(client, url):  # the whole window overlapped the simulation
                windows.append(result)
            if time.monotonic() - started > 900:
                raise RuntimeError("simulation still running after 15 minutes")
        took = time.monotonic() - started
        report = client.get(url).text
        seen = re.search(r"([\d,]+) customers(?: \(a sample)?[^:]*: <strong>", report)
    return {
        "simulation_wall_s": round(took, 1),
        "customers_simulated": seen.group(1) if seen else "?",
        "windows": windows,
        "worst_p99_us": max((w["p99_us"] for w in windows), default=None),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    out_dir = Path(args.out).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    redis = start_redis(log_path=out_dir / "console-sim-redis.log")
    try:
        settings = _settings(redis.url, args.cpu_share)
        loaded = load_population(settings, args.customers)
        result: dict[str, Any] = {
            "customers": args.customers, "rate": args.rate, "window_s": args.window,
            "population_load_s": round(loaded, 1), "cpu_count": os.cpu_count(),
        }  # fmt: skip
        for share, label in ((args.cpu_share, "throttled"), (1.0, "unthrottled")):
            settings = _settings(redis.url, share)
            proc = _serve(settings, out_dir / f"console-sim-api-{label}.log")
            try:
                _window(settings.api.port, args.customers, args.rate, 5)  # warm-up, not counted
                baseline = [_window(settings.api.port, args.customers, args.rate, args.window) for _ in range(args.windows)]
                during = _during(settings, args.customers, args.rate, args.window, _draft(f"2026-12-0{1 if share < 1 else 2}.1"))
                after = _window(settings.api.port, args.customers, args.rate, args.window)
            finally:
                proc.stop(10)
            result[label] = {
                "cpu_share": share, "baseline": baseline, "baseline_worst_p99_us": max(w["p99_us"] for w in baseline),
                "during": during, "after": after,
            }  # fmt: skip
            print(json.dumps({label: result[label]}, indent=1), flush=True)
        return result
    finally:
        redis.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--window", type=float, default=20.0, help="seconds per measurement window")
    parser.add_argument("--windows", type=int, default=3, help="baseline windows")
    parser.add_argument("--cpu-share", type=float, default=0.5, help="the console's simulation CPU share")
    parser.add_argument("--out", default="artifacts/console_simulation.json")
    args = parser.parse_args()
    result = run(args)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
