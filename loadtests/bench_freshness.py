"""Freshness benchmark: from an event acknowledged by Kafka to the first classify read that sees it.

Run: ``python -m loadtests.bench_freshness`` (rates 0, 1k, 5k, 20k events/s; three fetch settings)

On a private broker and Redis, for each background rate and each consumer fetch setting
(``--configs MIN_BYTES:MAX_WAIT_MS ...``, alternated: the order flips from one rate to the next),
on topics, a consumer group and a key prefix of its own:

1. one ``StateConsumer`` in a child process (``consumer_stack``, as ``router consume`` builds it,
   with ``ROUTER_KAFKA_FETCH_MIN_BYTES`` / ``_MAX_WAIT_MS`` set), its batch path instrumented from
   outside: when each poll started and returned, when the batch was placed (stored-offsets HMGET),
   triaged, when each lane's apply script started and ended, offsets stored, Kafka committed;
2. with no traffic: the consumer's CPU over ``--idle-seconds`` (its idle cost: fetches, the
   followers' Redis checks, the sweep's timer);
3. background events at the rate (a second child process, open loop, random customers of 100k);
4. ``--probes`` probe events, one at a time, each for a new customer: sent with ``acks=all``,
   timed from the broker's acknowledgement until this process's read of the customer (the read a
   classify does, ``StateStore.read_for_decision``, repeated every ~0.5 ms) finds its snapshot.

Each probe's time splits (same monotonic clock in all processes) into *queued* (the consumer was
still busy with an earlier batch when the event was acknowledged), *fetch* (from the later of
acknowledgement and the poll's start until the poll returned it: the broker's hold and the
client's fetch), *work* (poll returned until its lane's apply script returned: placing, triage,
the record read, fold, score, and the script) and *read* (script returned until the probe's read
saw it: this reader's polling interval). Writes JSON to ``--out`` and prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import psutil
from aiokafka import AIOKafkaProducer

from loadtests.bench_ingest import _real_identity
from router.core.identity import IdentityHasher
from router.devstack.infra import ManagedProcess, start_broker, start_redis
from router.ingest.consumer import StateConsumer, consumer_stack
from router.ops.heap import settle_heap
from router.ops.kafka import ensure_topics, producer_config
from router.settings import Settings, to_env
from router.state.store import StateStore, connect

_enc = msgspec.json.Encoder()
_PROBE = "PROBE"


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": _pct(values, 0.50),
        "p90": _pct(values, 0.90),
        "p99": _pct(values, 0.99),
        "max": max(values) if values else float("nan"),
        "mean": statistics.fmean(values) if values else float("nan"),
    }


# -- the consumer child: a StateConsumer whose batch path is timed from outside -------------------


def _instrument(
    worker: StateConsumer, batches: list[dict[str, Any]], probes: dict[str, tuple[int, float, float]]
) -> None:
    """Wrap the worker's calls (instance attributes) to time each batch's steps; nothing else changes."""
    now = time.perf_counter
    consumer, store, planner = worker.consumer, worker.store, worker.planner
    getmany, placed, triage = consumer.getmany, worker._placed, planner.triage
    apply, store_offsets, commit, process = store.apply, store.store_offsets, worker.commit, worker.process_batch
    current: dict[str, Any] = {}

    async def timed_getmany(*args: Any, **kwargs: Any) -> Any:
        t0 = now()
        batch = await getmany(*args, **kwargs)
        if batch:
            current.clear()
            current.update(
                poll_start=t0,
                polled=now(),
                events=sum(len(r) for r in batch.values()),
                lanes=[],
                ranges={str(tp.partition): [r[0].offset, r[-1].offset] for tp, r in batch.items()},
            )
            batches.append(current.copy())
        return batch

    async def timed_placed(*args: Any) -> bool:
        ok: bool = await placed(*args)
        batches[-1]["placed"] = now()
        return ok

    def timed_triage(*args: Any, **kwargs: Any) -> Any:
        out = triage(*args, **kwargs)
        batches[-1]["triaged"] = now()
        return out

    async def timed_apply(ops: Any, *args: Any) -> Any:
        t0 = now()
        ok = await apply(ops, *args)
        t1 = now()
        batches[-1]["lanes"].append([t0, t1, len(ops)])
        for op in ops:
            cid = op.snapshot.customer_id
            if cid.startswith(_PROBE):
                probes[cid] = (len(batches) - 1, t0, t1)
        return ok

    async def timed_store_offsets(*args: Any) -> None:
        t0 = now()
        await store_offsets(*args)
        batches[-1]["offsets"] = [t0, now()]

    async def timed_commit() -> None:
        t0 = now()
        await commit()
        if batches:
            batches[-1]["commit"] = [t0, now()]

    async def timed_process(batch: Any) -> None:
        await process(batch)
        batches[-1]["done"] = now()

    consumer.getmany = timed_getmany  # type: ignore[method-assign]
    worker._placed = timed_placed  # type: ignore[method-assign]
    planner.triage = timed_triage  # type: ignore[method-assign]
    store.apply = timed_apply  # type: ignore[method-assign]
    store.store_offsets = timed_store_offsets  # type: ignore[method-assign]
    worker.commit = timed_commit  # type: ignore[method-assign]
    worker.process_batch = timed_process  # type: ignore[method-assign]


async def _consumer_role() -> dict[str, Any]:
    settings = Settings.from_env()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    batches: list[dict[str, Any]] = []
    probes: dict[str, tuple[int, float, float]] = {}
    async with consumer_stack(settings) as worker:
        _instrument(worker, batches, probes)
        settle_heap()
        await worker.run(stop)
    return {"batches": batches, "probes": probes}


# -- the background load child: open loop at a fixed rate -----------------------------------------


async def _load_role(settings: Settings, rate: float, customers: int, seed: int) -> None:
    producer = AIOKafkaProducer(**{**producer_config(settings.kafka), "acks": 1, "linger_ms": 5})
    await producer.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    rnd = random.Random(seed)
    topic = settings.kafka.events_topic
    tick = 0.005
    sent = 0
    t0 = time.perf_counter()
    pending: list[asyncio.Future[Any]] = []
    try:
        while not stop.is_set():
            due = int((time.perf_counter() - t0) * rate)
            stamp = datetime.now(UTC).isoformat()
            while sent < due:
                cid = f"L{rnd.randrange(customers):06d}"
                body = (
                    f'{{"type":"usage","logins":{sent % 7},"features_used":{sent % 3},'
                    f'"event_id":"l{seed}-{sent}","customer_id":"{cid}","occurred_at":"{stamp}"}}'
                )
                pending.append(await producer.send(topic, value=body.encode(), key=cid.encode()))
                sent += 1
            if len(pending) > 5000:
                await asyncio.gather(*pending)
                pending = []
            await asyncio.sleep(tick)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.gather(*pending)
        await producer.stop()


# -- the probe: this process ----------------------------------------------------------------------


def _probe_body(cid: str, i: int) -> bytes:
    return _enc.encode(
        {
            "type": "usage",
            "logins": 1,
            "features_used": 1,
            "event_id": f"probe-{cid}-{i}",
            "customer_id": cid,
            "occurred_at": datetime.now(UTC).isoformat(),
        }
    )


async def _wait_seen(store: StateStore, h: str, timeout_s: float) -> float | None:
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        record, _ = await store.read_for_decision(h)
        if record.snapshot is not None:
            return time.perf_counter()
        await asyncio.sleep(0.0005)
    return None


async def _probes(
    settings: Settings, store: StateStore, n: int, tag: str, seed: int, timeout_s: float = 3.0
) -> list[dict[str, Any]]:
    producer = AIOKafkaProducer(**{**producer_config(settings.kafka), "linger_ms": 0})
    await producer.start()
    rnd = random.Random(seed)
    out: list[dict[str, Any]] = []
    try:
        for i in range(n):
            cid = f"{_PROBE}{tag}{i:05d}"
            meta = await producer.send_and_wait(
                settings.kafka.events_topic, value=_probe_body(cid, i), key=cid.encode()
            )
            acked = time.perf_counter()
            seen = await _wait_seen(store, store.customer_key(cid), timeout_s)
            out.append({"cid": cid, "partition": meta.partition, "offset": meta.offset, "acked": acked, "seen": seen})
            if len(out) >= 3 and all(p["seen"] is None for p in out[-3:]):
                break  # the consumer fell behind the background rate: no freshness to measure
            await asyncio.sleep(rnd.uniform(0.02, 0.08))  # out of step with the fetch cycle
    finally:
        await producer.stop()
    return out


def _split(probes: list[dict[str, Any]], trace: dict[str, Any]) -> list[dict[str, float]]:
    """Each probe's time, ms, in the parts the module docstring names (probes the trace missed: dropped)."""
    batches, applied = trace["batches"], trace["probes"]
    rows = []
    for p in probes:
        if p["seen"] is None or p["cid"] not in applied:
            continue
        index, apply_start, apply_end = applied[p["cid"]]
        b = batches[index]
        acked = p["acked"]
        queued = max(0.0, b["poll_start"] - acked)
        fetch = b["polled"] - max(acked, b["poll_start"])
        rows.append(
            {
                "total": (p["seen"] - acked) * 1e3,
                "queued": queued * 1e3,
                "fetch": fetch * 1e3,
                "work": (apply_end - b["polled"]) * 1e3,
                "before_script": (apply_start - b["polled"]) * 1e3,
                "script": (apply_end - apply_start) * 1e3,
                "read": (p["seen"] - apply_end) * 1e3,
                "batch_events": float(b["events"]),
                # what the batch before the probe's still did after its last apply: it delays the next poll
                "prev_offsets": _span(batches[index - 1].get("offsets")) if index else 0.0,
                "prev_commit": _span(batches[index - 1].get("commit")) if index else 0.0,
            }
        )
    return rows


def _span(pair: list[float] | None) -> float:
    return (pair[1] - pair[0]) * 1e3 if pair else 0.0


def _batch_stats(trace: dict[str, Any]) -> dict[str, float]:
    batches = [b for b in trace["batches"] if "done" in b]
    if not batches:
        return {}
    return {
        "batches": float(len(batches)),
        "events_p50": _pct([b["events"] for b in batches], 0.5),
        "events_max": float(max(b["events"] for b in batches)),
        "batch_ms_p50": _pct([(b["done"] - b["polled"]) * 1e3 for b in batches], 0.5),
        "batch_ms_p99": _pct([(b["done"] - b["polled"]) * 1e3 for b in batches], 0.99),
        "offsets_ms_p50": _pct([_span(b.get("offsets")) for b in batches], 0.5),
        "commit_ms_p50": _pct([_span(b["commit"]) for b in batches if "commit" in b], 0.5),
        "commit_ms_max": max([_span(b["commit"]) for b in batches if "commit" in b] or [0.0]),
        "commits": float(sum(1 for b in batches if "commit" in b)),
    }


async def _cell(
    base: Settings, bootstrap: str, url: str, rate: int, config: tuple[int, int], args: argparse.Namespace, tag: str
) -> dict[str, Any]:
    min_bytes, max_wait = config
    settings = msgspec.structs.replace(
        base,
        kafka=msgspec.structs.replace(
            base.kafka,
            bootstrap=bootstrap,
            events_topic=f"{tag}.events",
            dead_letter_topic=f"{tag}.dlq",
            alerts_topic=f"{tag}.alerts",
            group_id=f"{tag}.g",
            fetch_min_bytes=min_bytes,
            fetch_max_wait_ms=max_wait,
        ),
        redis=msgspec.structs.replace(base.redis, url=url, prefix=tag),
        stream=msgspec.structs.replace(base.stream, health_port=0),
        identity=_real_identity(base.identity),
    )
    await ensure_topics(settings.kafka)
    trace_path = Path(args.workdir) / f"{tag}.trace.json"
    env = {**os.environ, **to_env(settings)}
    me = [sys.executable, "-m", "loadtests.bench_freshness"]
    consumer = ManagedProcess(f"fresh-consumer-{tag}", [*me, "--role", "consumer", "--trace", str(trace_path)], env=env)
    load: ManagedProcess | None = None
    client = connect(url, cluster=False)
    store = StateStore(client, settings.redis.prefix, IdentityHasher.from_settings(settings.identity))
    try:
        # ready: a first probe went through (group joined, partitions placed)
        warm = await _probes(settings, store, 3, f"{tag}w", args.seed, timeout_s=30.0)
        if any(p["seen"] is None for p in warm):
            raise RuntimeError("consumer did not come up: " + consumer.tail(20))
        proc = psutil.Process(consumer.pid)
        idle_cpu = None
        if rate == 0:
            await asyncio.sleep(1.0)
            c0, t0 = sum(proc.cpu_times()[:2]), time.perf_counter()
            await asyncio.sleep(args.idle_seconds)
            idle_cpu = (sum(proc.cpu_times()[:2]) - c0) / (time.perf_counter() - t0)
        else:
            load = ManagedProcess(
                f"fresh-load-{tag}", [*me, "--role", "load", "--rate", str(rate), "--seed", str(args.seed)], env=env
            )
            await asyncio.sleep(args.warmup)
        c0, t0 = sum(proc.cpu_times()[:2]), time.perf_counter()
        probes = await _probes(settings, store, args.probes, tag, args.seed)
        busy_cpu = (sum(proc.cpu_times()[:2]) - c0) / (time.perf_counter() - t0)
        if load is not None and not load.running:
            raise RuntimeError("load generator died: " + load.tail(20))
    finally:
        if load is not None:
            load.stop()
        consumer.stop(timeout=15)
        await client.aclose()
    trace = json.loads(trace_path.read_text())
    trace_path.unlink()
    rows = _split(probes, trace)
    parts = ("total", "queued", "fetch", "work", "before_script", "script", "read")
    worst = sorted(rows, key=lambda r: r["total"])[-max(1, len(rows) // 100) :] if rows else []
    return {
        "rate": rate,
        "fetch_min_bytes": min_bytes,
        "fetch_max_wait_ms": max_wait,
        "probes": len(probes),
        "probes_seen": sum(1 for p in probes if p["seen"] is not None),
        "probes_traced": len(rows),
        "ms": {name: _summary([r[name] for r in rows]) for name in parts},
        "worst_1pct_mean_ms": {
            name: statistics.fmean(r[name] for r in worst) if worst else float("nan")
            for name in (*parts, "batch_events", "prev_offsets", "prev_commit")
        },
        "consumer_idle_cpu": idle_cpu,
        "consumer_cpu_under_load": busy_cpu,
        "batches": _batch_stats(trace),
    }


def _machine() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count(), "cpu_model": model, "load_average_at_start": list(os.getloadavg())}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    configs = [tuple(int(x) for x in c.split(":")) for c in args.configs]
    started = datetime.now(UTC).isoformat(timespec="seconds")
    machine = _machine()
    broker = start_broker()
    redis_server = start_redis()
    cells: list[dict[str, Any]] = []
    try:
        base = Settings.from_env()
        run = int(time.time())
        for k, rate in enumerate(args.rates):
            order = configs if k % 2 == 0 else configs[::-1]  # alternate: neither config always goes first
            for config in order:
                tag = f"fr{run}r{rate}b{config[0]}w{config[1]}"
                cell = await _cell(base, broker.bootstrap, redis_server.url, rate, config, args, tag)  # type: ignore[arg-type]
                ms = cell["ms"]["total"]
                print(
                    f"rate {rate:>6}/s  min_bytes {config[0]:>6} max_wait {config[1]:>3} ms: "
                    f"p50 {ms['p50']:.1f} p90 {ms['p90']:.1f} p99 {ms['p99']:.1f} max {ms['max']:.1f} ms"
                    + (f", idle CPU {cell['consumer_idle_cpu']:.1%}" if cell["consumer_idle_cpu"] is not None else ""),
                    flush=True,
                )
                cells.append(cell)
    finally:
        redis_server.close()
        broker.stop()
    return {
        "started_at": started,
        "machine": machine,
        "load_average_at_end": list(os.getloadavg()),
        "config": {
            "rates": args.rates,
            "configs": args.configs,
            "probes": args.probes,
            "idle_seconds": args.idle_seconds,
        },
        "commit": _commit(),
        "cells": cells,
    }


def _commit() -> str:
    with contextlib.suppress(Exception):
        import subprocess

        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    return "?"


def main(argv: list[str] | None = None, run: Callable[..., Any] = asyncio.run) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=int, nargs="+", default=[0, 1000, 5000, 20000])
    parser.add_argument(
        "--configs", nargs="+", default=["65536:50", "1:10", "1:25"],
        help="consumer fetch settings to compare, MIN_BYTES:MAX_WAIT_MS (the first is the old default)",
    )  # fmt: skip
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", default="artifacts")
    parser.add_argument("--out", default="artifacts/bench_freshness.json")
    parser.add_argument("--role", choices=["main", "consumer", "load"], default="main", help=argparse.SUPPRESS)
    parser.add_argument("--trace", default="", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "consumer":
        trace = run(_consumer_role())
        Path(args.trace).write_text(json.dumps(trace))
        return
    if args.role == "load":
        run(_load_role(Settings.from_env(), args.rate, 100_000, args.seed))
        return
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    result = run(main_async(args))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
