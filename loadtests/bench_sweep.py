"""Sweep benchmark: silent customers rescored per second by one consumer process, and what it costs.

Run: ``python -m loadtests.bench_sweep`` (1M customers; about 5 minutes on 2 cores)

On a private Redis and broker:

1. load ``--customers`` customers (:mod:`loadtests.population`: the real reducer, scoring and
   apply script, so every customer is in its partition's due index) as of ``--days-ago`` days
   ago: every score is due now (at the latest a day after it was computed);
2. **sweep alone**: one ``router consume`` process (6 partitions, no events to consume) sweeps
   them: customers rescored per second (from its own ``router_sweep_*`` metrics: the sweep's
   duration), CPU seconds of that process and of redis-server (``INFO cpu``) per customer over
   the sweep, alerts raised;
3. **classify while it sweeps**: one API worker (pinned to core 0, as in ``loadtests.bench_serve``)
   under a fixed open-loop load (``--rate`` classify/s of random known customers, generator on
   core 1 with Redis): latency without a sweep, then the index is made due again (every entry's
   time set to 0: the same customers, rescored a second time) and the same load runs while the
   consumer sweeps them; the sweep's rate under that load too. With two cores the consumer cannot
   have one of its own, as it would in production: for this pass it moves to core 1 at nice
   ``--consumer-nice`` (background work), so the API keeps its core and Redis and the load
   generator come first on theirs.

Writes JSON to ``--out`` (default ``artifacts/bench_sweep.json``), prints a summary;
``python -m loadtests.report --render-only`` renders it into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
import psutil
import redis

from loadtests.bench_serve import (
    HOST,
    LOAD_CORE,
    _commit,
    _cpu_model,
    _pin_pid,
    api_server,
    bench_settings,
    open_loop,
)
from loadtests.population import load_population
from router.devstack.infra import ManagedProcess, free_port, start_broker, start_redis
from router.ops.kafka import ensure_topics
from router.settings import to_env
from router.state.keys import Keys

__all__ = ["main", "run"]

_SAMPLE = re.compile(
    r"^router_(sweep_customers_total|sweep_duration_seconds_(?:sum|count)|sweep_due_customers|churn_alerts_total)"
    r'(?:\{result="(\w+)"\})?\s+(\S+)$'
)


def _consumer_metrics(port: int) -> dict[str, float]:
    """The consumer's sweep counters (rescored, conflict, gone, duration sum and count, due) and alerts."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            name = m.group(2) or m.group(1).removeprefix("sweep_")
            out[name] = float(m.group(3))
    return out


def _redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def _wait_sweep(port: int, customers: int, since: dict[str, float], timeout: float) -> dict[str, float]:
    """Wait until the consumer finished a sweep that rescored ``customers`` more than ``since``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = _consumer_metrics(port)
        done = m.get("rescored", 0.0) + m.get("conflict", 0.0) + m.get("gone", 0.0)
        before = since.get("rescored", 0.0) + since.get("conflict", 0.0) + since.get("gone", 0.0)
        # The duration histogram counts a sweep when it ends: a new one plus all customers taken up.
        if done - before >= customers and m.get("duration_seconds_count", 0) > since.get("duration_seconds_count", 0):
            return m
        time.sleep(0.2)
    raise RuntimeError("the sweep did not finish in time")


def _wait_started(port: int, since: dict[str, float], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _consumer_metrics(port).get("rescored", 0.0) > since.get("rescored", 0.0):
            return
        time.sleep(0.05)
    raise RuntimeError("the sweep did not start")


def _sweep_figures(
    before: dict[str, float], after: dict[str, float], cpu: float, redis_cpu: float, idle_cpu_per_s: float = 0.0
) -> dict[str, Any]:
    rescored = after["rescored"] - before.get("rescored", 0.0)
    seconds = after["duration_seconds_sum"] - before.get("duration_seconds_sum", 0.0)
    net = cpu - idle_cpu_per_s * seconds
    return {
        "sweep_cpu_us_per_customer": net / rescored * 1e6 if rescored else 0.0,
        "rescored": rescored,
        "conflicts": after.get("conflict", 0.0) - before.get("conflict", 0.0),
        "alerts": after.get("churn_alerts_total", 0.0) - before.get("churn_alerts_total", 0.0),
        "seconds": seconds,
        "per_second": rescored / seconds if seconds else 0.0,
        "process_cpu_us_per_customer": cpu / rescored * 1e6 if rescored else 0.0,
        "redis_cpu_us_per_customer": redis_cpu / rescored * 1e6 if rescored else 0.0,
    }


def _background(pid: int, core: int, nice: int) -> None:
    """Every thread of ``pid`` onto ``core`` at ``nice`` (affinity and priority are per thread on Linux)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        tid = int(task.name)
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, {core})
            os.setpriority(os.PRIO_PROCESS, tid, nice)


def run(args: argparse.Namespace) -> dict[str, Any]:
    out_dir = Path(args.out).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    n = args.customers
    result: dict[str, Any] = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "load_average_at_start": os.getloadavg(),
            "pinning": f"API on core 0; Redis and the load generator on core {LOAD_CORE}; the consumer unpinned "
            f"for the sweep alone, on core {LOAD_CORE} at nice {args.consumer_nice} under classify load",
        },
        "commit": _commit(),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
    }
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(start_redis())
        if server.process is not None:
            _pin_pid(server.process.pid, LOAD_CORE)
        broker = start_broker(log_path=out_dir / "sweep-broker.log")
        stack.callback(broker.stop)
        base = bench_settings(server.url, "sw")
        settings = msgspec.structs.replace(
            base,
            kafka=msgspec.structs.replace(base.kafka, bootstrap=broker.bootstrap, group_id="bench-sweep"),
        )
        import asyncio

        asyncio.run(ensure_topics(settings.kafka))
        client = redis.Redis.from_url(server.url)
        stack.callback(client.close)
        empty = float(client.info("memory")["used_memory"])
        print(f"loading {n:,} customers as of {args.days_ago} days ago", flush=True)
        load_s = load_population(settings, n, as_of=time.time() - args.days_ago * 86_400)
        used = float(client.info("memory")["used_memory"])
        due_keys = list(client.scan_iter(match="sw:*:due:*", count=1000))
        due_bytes = sum(int(client.memory_usage(k, samples=0) or 0) for k in due_keys)
        due_now = sum(int(client.zcount(k, "-inf", time.time())) for k in due_keys)
        result["population"] = {
            "customers": n,
            "load_seconds": load_s,
            "redis_bytes_per_customer": (used - empty) / n,
            "due_index_bytes_per_customer": due_bytes / n,
            "due_at_start": due_now,
        }
        print(f"  loaded in {load_s:.0f} s; {(used - empty) / n:,.0f} Redis bytes/customer, due index "
              f"{due_bytes / n:,.0f}; {due_now:,} due now", flush=True)  # fmt: skip

        # 2. The sweep alone.
        port = free_port()
        consumer_settings = msgspec.structs.replace(
            settings,
            stream=msgspec.structs.replace(settings.stream, health_port=port, sweep_interval_s=args.interval),
        )
        result["consumer"] = {
            "partitions": settings.kafka.partitions,
            "sweep_batch": consumer_settings.stream.sweep_batch,
            "sweep_interval_s": consumer_settings.stream.sweep_interval_s,
        }
        env = {**os.environ, **to_env(consumer_settings)}
        consumer = ManagedProcess(
            "consume", [sys.executable, "-m", "router.cli", "consume"], env=env, log_path=out_dir / "sweep-consumer.log"
        )
        stack.callback(consumer.stop)
        deadline = time.monotonic() + 60
        while True:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"http://{HOST}:{port}/health/ready", timeout=2) as r,
            ):
                if r.status == 200 and b"6 partitions" in r.read():
                    break
            if not consumer.running or time.monotonic() > deadline:
                raise RuntimeError("consumer did not start:\n" + consumer.tail(30))
            time.sleep(0.1)
        before = _consumer_metrics(port)
        cpu0, rcpu0 = _cpu(consumer.pid), _redis_cpu(client)
        after = _wait_sweep(port, due_now, before, timeout=600)
        cpu1, rcpu1 = _cpu(consumer.pid), _redis_cpu(client)
        # What the consumer spends doing nothing (polling the broker, its sweeps finding nobody due):
        # not the sweep's cost, though it is in the CPU time over the sweep.
        time.sleep(args.idle_seconds)
        idle = (_cpu(consumer.pid) - cpu1) / args.idle_seconds
        result["consumer_idle_cpu_share"] = idle
        alone = _sweep_figures(before, after, cpu1 - cpu0, rcpu1 - rcpu0, idle)
        result["sweep_alone"] = alone
        print(f"  sweep alone: {alone['rescored']:,.0f} customers in {alone['seconds']:.1f} s = "
              f"{alone['per_second']:,.0f}/s; consumer CPU {alone['process_cpu_us_per_customer']:.1f} us "
              f"({alone['sweep_cpu_us_per_customer']:.1f} us without its idle {idle:.1%} of a core), Redis CPU "
              f"{alone['redis_cpu_us_per_customer']:.1f} us per customer", flush=True)  # fmt: skip

        # 3. Classify latency without and with a sweep running.
        api = stack.enter_context(api_server(settings, out_dir / "sweep-api.log"))
        open_loop(api_port := settings.api.port, "classify", n, args.rate, 5.0, api.pid)  # warm-up
        rcpu0 = _redis_cpu(client)
        quiet = open_loop(api_port, "classify", n, args.rate, args.seconds, api.pid)
        quiet_redis = (_redis_cpu(client) - rcpu0) / args.seconds
        print(f"  classify at {args.rate:.0f}/s without a sweep: p50 {quiet['p50_us']:,.0f} us, "
              f"p99 {quiet['p99_us']:,.0f} us", flush=True)  # fmt: skip
        if (os.cpu_count() or 1) > 1:
            _background(consumer.pid, LOAD_CORE, args.consumer_nice)  # type: ignore[arg-type]
        keys = Keys(settings.redis.prefix)
        for p in range(settings.kafka.partitions):
            due_key = keys.due("00", p)
            client.zunionstore(due_key, {due_key: 0})  # every entry due at time 0: the same customers again
        before = _consumer_metrics(port)
        _wait_started(port, before, timeout=3 * args.interval + 30)
        cpu0, rcpu0, t0 = _cpu(consumer.pid), _redis_cpu(client), time.monotonic()
        busy = open_loop(api_port, "classify", n, args.rate, args.seconds, api.pid)
        during = _consumer_metrics(port)
        overlapped = during.get("duration_seconds_count", 0) == before.get("duration_seconds_count", 0)
        after = _wait_sweep(port, n, before, timeout=600)
        sweep_s = time.monotonic() - t0
        loaded = _sweep_figures(
            before, after, _cpu(consumer.pid) - cpu0,
            _redis_cpu(client) - rcpu0 - quiet_redis * min(args.seconds, sweep_s), idle,
        )  # fmt: skip
        result["classify"] = {
            "rate": args.rate,
            "seconds": args.seconds,
            "without_sweep": quiet,
            "during_sweep": busy,
            "load_window_inside_sweep": overlapped,
            "p99_ratio": busy["p99_us"] / quiet["p99_us"] if quiet["p99_us"] else None,
            "p50_ratio": busy["p50_us"] / quiet["p50_us"] if quiet["p50_us"] else None,
        }
        result["sweep_under_classify_load"] = loaded
        print(f"  classify during the sweep: p50 {busy['p50_us']:,.0f} us, p99 {busy['p99_us']:,.0f} us "
              f"(x{result['classify']['p99_ratio']:.2f}); the sweep meanwhile {loaded['per_second']:,.0f}/s "
              f"(window inside the sweep: {overlapped})", flush=True)  # fmt: skip
    result["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--days-ago", type=float, default=2.0, help="when the population was last scored")
    parser.add_argument("--interval", type=float, default=2.0, help="the consumer's sweep interval (s)")
    parser.add_argument("--rate", type=float, default=500.0, help="offered classify requests per second")
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds per classify run")
    parser.add_argument("--consumer-nice", type=int, default=10, help="the consumer's priority under classify load")
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="seconds the idle consumer's CPU is measured")
    parser.add_argument("--out", default="artifacts/bench_sweep.json")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    result = run(args)
    result["wall_seconds"] = time.monotonic() - t0
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out} in {result['wall_seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
