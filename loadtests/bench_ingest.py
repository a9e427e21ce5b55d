"""Ingest benchmark: events/s applied-and-committed by one consumer process vs the raw ceiling.

Run: ``python -m loadtests.bench_ingest --events 200000`` (populations 1M and 20k customers)

For each population (``--customers``), on the same private broker and Redis, its own topics
and key prefix:

1. produce N keyed events spread over C customers (1M: nearly every event is a customer's
   first; 20k: about ten events per customer, so snapshots carry history and the consumer's
   record cache hits);
2. **ceilings**, each an aiokafka consumer of this process in a fresh group: *raw* only fetches
   the records; *decode* also decodes each into its typed event; *compute* runs the per-event
   computation of the consumer and nothing else (decode, the reducer's fold into snapshots kept
   in a dict, features, batched ONNX, CLV, the snapshot's encoding; no Redis, no bookkeeping),
   so the gap between it and *router* is what exactly-once writing and bookkeeping cost;
3. **router**: a :class:`router.ingest.consumer.StateConsumer` (decode, fold, score with ONNX, the
   Lua compare-and-set per lane, offsets, Kafka commit), timed from its first poll until the
   offsets stored with the state cover all N events; CPU seconds of this process (the
   consumer) and of Redis over that interval, per event;
4. Redis memory per customer snapshot (``used_memory`` delta / customers written, and
   ``MEMORY USAGE`` of sampled keys), and one customer with 95 days of daily history;
5. **scale-out** (``--processes``, default 1 and 2): that many ``router consume`` processes in
   one fresh consumer group and key prefix, timed from the first offsets they store until all
   N events are applied.

Consumer settings come from the environment (``ROUTER_STREAM_LANES``, ...). Writes JSON to
``--out`` (default ``artifacts/bench_ingest.json``) and prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from router.churn.model import ChurnModel
from router.core.features import features
from router.core.identity import IdentityHasher
from router.core.reducer import Snapshot, fold
from router.core.scoring import assess, clv_bin
from router.devstack.infra import ManagedProcess, start_broker, start_redis
from router.ingest.consumer import consumer_stack
from router.ops.heap import settle_heap
from router.ops.kafka import ensure_topics
from router.ops.metrics import RECORD_CACHE as _CACHE
from router.policy import load_policy
from router.settings import IdentitySettings, Settings, placeholder_reason, to_env
from router.state.keys import Keys
from router.state.records import decode_snapshot, encode_snapshot
from router.state.store import connect
from schemas.events import event_decoder

_enc = msgspec.json.Encoder()


def _events(n: int, customers: int, seed: int) -> list[tuple[bytes, bytes]]:
    rnd = random.Random(seed)
    now = datetime.now(UTC)
    # ascending event times, so each customer's events arrive in order as a real producer sends them
    offsets = sorted((rnd.randrange(0, 20 * 86400) for _ in range(n)), reverse=True)
    out = []
    for i in range(n):
        cid = f"C{rnd.randrange(customers):07d}"
        out.append(
            (cid.encode(), event_body(rnd, f"b{seed}-{i}", cid, (now - timedelta(seconds=offsets[i])).isoformat()))
        )
    return out


def event_body(rnd: random.Random, event_id: str, customer_id: str, occurred_at: str) -> bytes:
    """One event of the benchmark's mix: usage 55 %, orders 25 %, payments 10 %, tickets 10 %."""
    r = rnd.random()
    if r < 0.55:
        body: dict[str, Any] = {"type": "usage", "logins": rnd.randint(0, 9), "features_used": rnd.randint(0, 5)}
    elif r < 0.8:
        body = {"type": "order_placed", "order_id": f"o{event_id}", "amount": rnd.randint(5, 500)}
    elif r < 0.9:
        body = {"type": "payment", "invoice_id": f"i{event_id}", "amount": 49.0, "status": "paid"}
    else:
        body = {"type": "ticket_opened", "ticket_id": f"t{event_id}", "severity": "normal"}
    body.update(event_id=event_id, customer_id=customer_id, occurred_at=occurred_at)
    return _enc.encode(body)


async def _produce(settings: Settings, records: list[tuple[bytes, bytes]]) -> float:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap, acks=1, linger_ms=20, max_batch_size=256 * 1024
    )
    await producer.start()
    t0 = time.perf_counter()
    try:
        futures = [await producer.send(settings.kafka.events_topic, value=v, key=k) for k, v in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - t0


async def _fetch(settings: Settings, n: int, group: str, handle: Callable[[list[Any]], None]) -> tuple[float, float]:
    """Fetch ``n`` records in a fresh consumer group, handing each polled batch to ``handle``: (wall, CPU) s."""
    consumer = AIOKafkaConsumer(
        settings.kafka.events_topic,
        bootstrap_servers=settings.kafka.bootstrap,
        group_id=f"{settings.kafka.group_id}-{group}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    try:
        got = 0
        t0 = cpu0 = 0.0
        while got < n:
            batch = await consumer.getmany(timeout_ms=500, max_records=settings.stream.batch_max)
            if batch and not t0:
                t0, cpu0 = time.perf_counter(), time.process_time()
            records = [rec for recs in batch.values() for rec in recs]
            handle(records)
            got += len(records)
        return time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        await consumer.stop()


def _decode_only(records: list[Any]) -> None:
    for rec in records:
        event_decoder.decode(rec.value)


class _InMemoryPipeline:
    """The consumer's per-event computation with nothing around it: decode, fold, features, batched
    ONNX, CLV and the snapshot's encoding, on snapshots kept in a dict as the bytes the consumer
    would store (decoded again when the customer's next event comes, as a read from Redis would
    be). No Redis, no offsets, no dead letters, no counters: what any consumer built on this
    reducer and model must spend."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.hasher = IdentityHasher.from_settings(settings.identity)
        self.model = ChurnModel.load(settings.model.path)
        self.prices = load_policy(settings.policy.path).service_prices
        self.stored: dict[str, bytes] = {}

    def __call__(self, records: list[Any]) -> None:
        lateness, hasher, stored = self.settings.stream.lateness_s, self.hasher, self.stored
        touched: dict[str, Snapshot] = {}
        for rec in records:
            event = event_decoder.decode(rec.value)
            cid = event.customer_id
            snap = touched.get(cid)
            if snap is None and cid in stored:
                snap = decode_snapshot(stored[cid])
            touched[cid], _ = fold(snap, event, lateness_s=lateness, hasher=hasher)
        if not touched:
            return
        now = int(time.time())
        snaps = list(touched.values())
        rows = [features(snap, max(now, snap.last_event_at)) for snap in snaps]
        churn = self.model.predict(np.asarray(rows, dtype=np.float32)).tolist()
        for cid, snap, row, p in zip(touched, snaps, rows, churn, strict=True):
            clv_bin(assess(snap, row, p, self.settings.model, self.prices).clv.value)
            stored[cid] = encode_snapshot(snap)


async def _ceilings(settings: Settings, n: int) -> dict[str, float]:
    """Same-run ceilings for one process: fetch only, fetch + decode, fetch + the in-memory pipeline."""
    out: dict[str, float] = {}
    settle_heap()  # as the consumer runs
    for name, handle in (
        ("raw", lambda records: None),
        ("decode", _decode_only),
        ("compute", _InMemoryPipeline(settings)),
    ):
        wall, cpu = await _fetch(settings, n, name, handle)
        out[f"{name}_events_per_s"] = n / wall
        out[f"{name}_cpu_us_per_event"] = cpu / n * 1e6
    return out


async def _router_consume(settings: Settings, n: int) -> dict[str, float]:
    """Run a consumer until the offsets stored with the state cover ``n`` events; time and CPU."""
    stop = asyncio.Event()
    redis_client = connect(settings.redis.url, cluster=False)
    async with consumer_stack(settings) as worker:
        settle_heap()  # as `router consume` does once started
        task = asyncio.create_task(worker.run(stop))
        t0 = cpu0 = redis0 = 0.0
        hits0, misses0 = _CACHE.labels("hit")._value.get(), _CACHE.labels("miss")._value.get()
        key = worker.offsets_key
        while True:
            await asyncio.sleep(0.05)
            if not t0 and worker.last_poll:
                t0, cpu0, redis0 = time.perf_counter(), time.process_time(), await _redis_cpu(redis_client)
            raw = await worker.store.client.hgetall(key)
            if sum(int(v) for v in raw.values()) >= n:
                break
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        redis_cpu = await _redis_cpu(redis_client) - redis0
        hits = _CACHE.labels("hit")._value.get() - hits0
        misses = _CACHE.labels("miss")._value.get() - misses0
        stop.set()
        await task
    await redis_client.aclose()
    return {
        "seconds": elapsed,
        "applied": float(worker.applied),
        # this process is the consumer (plus a 20 Hz poll of the stored offsets): its CPU per event
        # is the steadier figure on a shared machine, and Redis's shows what the writes cost it
        "consumer_cpu_us_per_event": cpu / n * 1e6,
        "redis_cpu_us_per_event": redis_cpu / n * 1e6,
        "record_cache_hit_rate": hits / max(1.0, hits + misses),
    }


async def _group_consume(settings: Settings, n: int, processes: int) -> dict[str, float]:
    """``processes`` × ``router consume`` in one fresh group and key prefix: the group's events/s.

    Timed from the first offsets the group stores until they cover all ``n`` events, counting
    only the events applied in that interval (start-up and the first batch are excluded)."""
    settings = msgspec.structs.replace(
        settings,
        kafka=msgspec.structs.replace(settings.kafka, group_id=f"{settings.kafka.group_id}-x{processes}"),
        redis=msgspec.structs.replace(settings.redis, prefix=f"{settings.redis.prefix}x{processes}"),
    )
    env = {**os.environ, **to_env(settings)}
    argv = [sys.executable, "-m", "router.cli", "consume"]
    procs = [ManagedProcess(f"consume{i}", argv, env=env) for i in range(processes)]
    client = connect(settings.redis.url, cluster=False)
    key = Keys(settings.redis.prefix).offsets(settings.kafka.group_id, settings.kafka.events_topic)
    try:
        t0 = 0.0
        first = done = 0
        deadline = time.monotonic() + 600
        while done < n:
            if time.monotonic() > deadline or not all(p.running for p in procs):
                raise RuntimeError("group did not catch up: " + " | ".join(p.tail(5) for p in procs))
            await asyncio.sleep(0.02)
            done = sum(int(v) for v in (await client.hgetall(key)).values())
            if done and not t0:
                t0, first = time.perf_counter(), done
        elapsed = time.perf_counter() - t0
        cpu = sum(sum(psutil.Process(p.pid).cpu_times()[:2]) for p in procs)
        return {"processes": processes, "events_per_s": (n - first) / elapsed, "cpu_us_per_event_all": cpu / n * 1e6}
    finally:
        for p in procs:
            p.stop()
        await client.aclose()


async def _redis_cpu(client: Any) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _memory(settings: Settings, customers_written: int, used_before: int) -> dict[str, float]:
    client = connect(settings.redis.url, cluster=False)
    try:
        info = await client.info("memory")
        used = int(info["used_memory"]) - used_before
        sizes = []
        async for key in client.scan_iter(match=f"{settings.redis.prefix}:*:c:*", count=1000):
            sizes.append(int(await client.memory_usage(key) or 0))
            if len(sizes) >= 2000:
                break
        return {
            "used_memory_delta_per_customer_bytes": used / max(1, customers_written),
            "memory_usage_median_bytes": statistics.median(sizes) if sizes else 0.0,
            "memory_usage_p99_bytes": sorted(sizes)[int(len(sizes) * 0.99)] if sizes else 0.0,
        }
    finally:
        await client.aclose()


async def _heavy_customer_bytes(settings: Settings) -> float:
    """Memory of a customer with 90 days of daily usage, orders and tickets (the worst usual case)."""
    now = datetime.now(UTC)
    records = []
    for d in range(95):
        t = (now - timedelta(days=95 - d)).isoformat()
        for j, body in enumerate(
            (
                {"type": "usage", "logins": 7, "features_used": 4},
                {"type": "order_placed", "order_id": f"h{d}", "amount": 120.5},
                {"type": "ticket_resolved", "ticket_id": f"t{d}", "sentiment": 0.3, "csat": 4},
            )
        ):
            body.update(event_id=f"heavy-{d}-{j}", customer_id="HEAVY", occurred_at=t)
            records.append((b"HEAVY", _enc.encode(body)))
    await _produce(settings, records)
    stop = asyncio.Event()
    async with consumer_stack(settings) as worker:
        task = asyncio.create_task(worker.run(stop))
        h = worker.store.customer_key("HEAVY")
        key = worker.store.keys.customer(h)
        for _ in range(600):
            await asyncio.sleep(0.05)
            rec = await worker.store.read_customer(h)
            if rec.snapshot and rec.snapshot.events_applied >= len(records):
                break
        size = float(await worker.store.client.memory_usage(key) or 0)
        stop.set()
        await task
    return size


def _real_identity(identity: IdentitySettings) -> IdentitySettings:
    if placeholder_reason(identity.hash_key) is None:
        return identity
    return msgspec.structs.replace(identity, hash_key=secrets.token_urlsafe(32))


async def _isolated(base: Settings, bootstrap: str, url: str, token: str, args: argparse.Namespace) -> Settings:
    """``base`` on its own topics (created), consumer group and key prefix named after ``token``."""
    settings = msgspec.structs.replace(
        base,
        kafka=msgspec.structs.replace(
            base.kafka,
            bootstrap=bootstrap,
            events_topic=f"{token}.events",
            dead_letter_topic=f"{token}.dlq",
            alerts_topic=f"{token}.alerts",
            group_id=f"{token}.g",
            partitions=args.partitions,
        ),
        redis=msgspec.structs.replace(base.redis, url=url, prefix=token),
        stream=msgspec.structs.replace(base.stream, health_port=0, batch_max=args.batch),
        # the state is this run's own: a placeholder identity key (refused by the consumer) gets a random one
        identity=_real_identity(base.identity),
    )
    await ensure_topics(settings.kafka)
    return settings


async def _population(
    args: argparse.Namespace, base: Settings, bootstrap: str, url: str, customers: int
) -> dict[str, Any]:
    """One population on its own topics and key prefix: produce, raw ceiling, router, memory."""
    settings = await _isolated(base, bootstrap, url, f"bench{int(time.time())}c{customers}", args)
    print(f"generating {args.events:,} events for {customers:,} customers ...", flush=True)
    records = _events(args.events, customers, args.seed)
    customers_written = len({k for k, _ in records})
    produce_s = await _produce(settings, records)
    del records
    print(f"produced in {produce_s:.1f} s", flush=True)
    ceilings = await _ceilings(settings, args.events)
    print(
        "same-process ceilings: "
        + ", ".join(
            f"{name} {ceilings[f'{name}_events_per_s']:,.0f} events/s ({ceilings[f'{name}_cpu_us_per_event']:.1f} us CPU)"
            for name in ("raw", "decode", "compute")
        ),
        flush=True,
    )
    client = connect(settings.redis.url, cluster=False)
    used_before = int((await client.info("memory"))["used_memory"])
    await client.aclose()
    router = await _router_consume(settings, args.events)
    print(
        f"router consume: {args.events / router['seconds']:,.0f} events/s "
        f"({router['consumer_cpu_us_per_event']:.1f} us consumer CPU + {router['redis_cpu_us_per_event']:.1f} us "
        "Redis CPU per event)",
        flush=True,
    )
    memory = await _memory(settings, customers_written, used_before)  # before the groups write their own copies
    groups = [await _group_consume(settings, args.events, k) for k in args.processes]
    for g in groups:
        print(f"group of {g['processes']:.0f} `router consume`: {g['events_per_s']:,.0f} events/s", flush=True)
    return {
        "groups": groups,
        "customers_population": customers,
        "customers_written": customers_written,
        "events_per_customer": args.events / customers_written,
        "raw_consume_events_per_s": ceilings["raw_events_per_s"],
        "router_applied_committed_events_per_s": args.events / router["seconds"],
        "ratio_to_raw": args.events / router["seconds"] / ceilings["raw_events_per_s"],
        **{k: v for k, v in ceilings.items() if k != "raw_events_per_s"},
        "consumer_cpu_us_per_event": router["consumer_cpu_us_per_event"],
        "redis_cpu_us_per_event": router["redis_cpu_us_per_event"],
        "record_cache_hit_rate": router["record_cache_hit_rate"],
        "produce_s": produce_s,
        **memory,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    broker = start_broker()
    redis_server = start_redis()
    try:
        base = Settings.from_env()  # ROUTER_STREAM_* etc. tune the consumer under test
        runs = [await _population(args, base, broker.bootstrap, redis_server.url, c) for c in args.customers]
        heavy_settings = await _isolated(base, broker.bootstrap, redis_server.url, f"heavy{int(time.time())}", args)
        heavy = await _heavy_customer_bytes(heavy_settings)
        return {
            "events": args.events,
            "partitions": args.partitions,
            "batch_max": args.batch,
            "lanes": base.stream.lanes,
            "cache_customers": base.stream.cache_customers,
            "runs": runs,
            "heavy_customer_memory_usage_bytes": heavy,
        }
    finally:
        redis_server.close()
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument(
        "--customers", type=int, nargs="+", default=[1_000_000, 20_000],
        help="populations: 1M (nearly every event a new customer) and 20k (~10 events each, cache hits)",
    )  # fmt: skip
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--batch", type=int, default=Settings().stream.batch_max)
    parser.add_argument(
        "--processes", type=int, nargs="*", default=[1, 2],
        help="also run groups of this many `router consume` processes (scale-out; none: skip)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="artifacts/bench_ingest.json")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
