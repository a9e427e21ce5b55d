"""Ingest benchmark: events/s applied-and-committed by one consumer process vs the raw ceiling.

Run: ``python -m loadtests.bench_ingest --events 300000 --customers 1000000``

In one run, on the same private broker and Redis:

1. produce N keyed events spread over a population of C customers;
2. **ceiling**: an aiokafka consumer that only fetches the records (no decode, no Redis);
3. **router**: a :class:`router.consumer.StateConsumer` (decode, fold, score with ONNX,
   one pipeline per batch with the Lua compare-and-set, Kafka commit), timed from start
   until the offsets stored with the state cover all N events;
4. Redis memory per customer snapshot (``used_memory`` delta / customers written, and
   ``MEMORY USAGE`` of sampled keys, including customers with 90 days of daily history).

Prints a table and writes JSON to ``--out`` (default ``artifacts/bench_ingest.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from router.consumer import consumer_stack, settle_heap
from router.infra import start_broker, start_redis
from router.kafka import ensure_topics
from router.settings import Settings
from router.store import connect

_enc = msgspec.json.Encoder()


def _events(n: int, customers: int, seed: int) -> list[tuple[bytes, bytes]]:
    rnd = random.Random(seed)
    now = datetime.now(UTC)
    # ascending event times, so each customer's events arrive in order as a real producer sends them
    offsets = sorted((rnd.randrange(0, 20 * 86400) for _ in range(n)), reverse=True)
    out = []
    for i in range(n):
        cid = f"C{rnd.randrange(customers):07d}"
        t = (now - timedelta(seconds=offsets[i])).isoformat()
        r = rnd.random()
        if r < 0.55:
            body: dict[str, Any] = {"type": "usage", "logins": rnd.randint(0, 9), "features_used": rnd.randint(0, 5)}
        elif r < 0.8:
            body = {"type": "order_placed", "order_id": f"o{i}", "amount": rnd.randint(5, 500)}
        elif r < 0.9:
            body = {"type": "payment", "invoice_id": f"i{i}", "amount": 49.0, "status": "paid"}
        else:
            body = {"type": "ticket_opened", "ticket_id": f"t{i}", "severity": "normal"}
        body.update(event_id=f"b{seed}-{i}", customer_id=cid, occurred_at=t)
        out.append((cid.encode(), _enc.encode(body)))
    return out


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


async def _raw_consume(settings: Settings, n: int) -> float:
    consumer = AIOKafkaConsumer(
        settings.kafka.events_topic,
        bootstrap_servers=settings.kafka.bootstrap,
        group_id=settings.kafka.group_id + "-raw",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    try:
        got = 0
        t0 = 0.0
        while got < n:
            batch = await consumer.getmany(timeout_ms=500, max_records=settings.stream.batch_max)
            if batch and not t0:
                t0 = time.perf_counter()
            got += sum(len(r) for r in batch.values())
        return time.perf_counter() - t0
    finally:
        await consumer.stop()


async def _router_consume(settings: Settings, n: int) -> tuple[float, int]:
    stop = asyncio.Event()
    async with consumer_stack(settings) as worker:
        settle_heap()  # as `router consume` does once started
        task = asyncio.create_task(worker.run(stop))
        t0 = 0.0
        key = worker.offsets_key
        while True:
            await asyncio.sleep(0.05)
            if not t0 and worker.last_poll:
                t0 = time.perf_counter()
            raw = await worker.store.client.hgetall(key)
            if sum(int(v) for v in raw.values()) >= n:
                break
        elapsed = time.perf_counter() - t0
        stop.set()
        await task
        return elapsed, worker.applied


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


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    broker = start_broker()
    redis_server = start_redis()
    try:
        base = Settings.from_env()  # ROUTER_STREAM_* etc. tune the consumer under test
        token = f"bench{int(time.time())}"
        settings = msgspec.structs.replace(
            base,
            kafka=msgspec.structs.replace(
                base.kafka,
                bootstrap=broker.bootstrap,
                events_topic=f"{token}.events",
                dead_letter_topic=f"{token}.dlq",
                alerts_topic=f"{token}.alerts",
                group_id=f"{token}.g",
                partitions=args.partitions,
            ),
            redis=msgspec.structs.replace(base.redis, url=redis_server.url, prefix=token),
            stream=msgspec.structs.replace(base.stream, health_port=0, batch_max=args.batch),
        )
        await ensure_topics(settings.kafka)
        print(f"generating {args.events:,} events for {args.customers:,} customers ...", flush=True)
        records = _events(args.events, args.customers, args.seed)
        customers_written = len({k for k, _ in records})
        produce_s = await _produce(settings, records)
        print(f"produced in {produce_s:.1f} s", flush=True)
        raw_s = await _raw_consume(settings, args.events)
        print(f"raw consume: {args.events / raw_s:,.0f} events/s", flush=True)
        client = connect(settings.redis.url, cluster=False)
        used_before = int((await client.info("memory"))["used_memory"])
        await client.aclose()
        router_s, applied = await _router_consume(settings, args.events)
        print(f"router consume: {args.events / router_s:,.0f} events/s ({applied:,} applied)", flush=True)
        memory = await _memory(settings, customers_written, used_before)
        heavy_settings = msgspec.structs.replace(
            settings, kafka=msgspec.structs.replace(settings.kafka, group_id=settings.kafka.group_id + "-heavy")
        )
        heavy = await _heavy_customer_bytes(heavy_settings)
        result = {
            "events": args.events,
            "customers_population": args.customers,
            "customers_written": customers_written,
            "partitions": args.partitions,
            "batch_max": args.batch,
            "raw_consume_events_per_s": args.events / raw_s,
            "router_applied_committed_events_per_s": args.events / router_s,
            "ratio_to_raw": raw_s / router_s,
            "produce_s": produce_s,
            **memory,
            "heavy_customer_memory_usage_bytes": heavy,
        }
        return result
    finally:
        redis_server.close()
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="artifacts/bench_ingest.json")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    width = max(len(k) for k in result)
    for k, v in result.items():
        print(f"{k:<{width}}  {v:,.2f}" if isinstance(v, float) else f"{k:<{width}}  {v:,}")


if __name__ == "__main__":
    main()
