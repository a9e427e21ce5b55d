"""Catch-up after a consumer restart: a known population, a backlog of events, `router consume` started.

Run: ``python -m loadtests.bench_catchup`` (defaults: 1M customers, 10M events, one process;
about 40 minutes on the 2-core dev machine, most of it the consumer working through the log).

The situation of issue #19 item 2: the consumers were down while the business kept sending
events, and are started again with the backlog already in the log. On a private broker and
Redis:

1. load ``--customers`` customers into Redis with :mod:`loadtests.population` (the snapshots,
   scores, indexes and due times the consumer would have written before it went down);
2. produce ``--events`` keyed events for those customers into a fresh topic, in event-time
   order over the ``--backlog-hours`` since the population was written (the mix of
   :mod:`loadtests.bench_ingest`), before any consumer runs;
3. start ``--processes`` × ``router consume`` (real processes, their settings from the
   environment like a deployment's) and time them until the offsets stored with the state cover
   every event: *catch-up* counts from the processes' start (start-up included), *applying*
   from the first offsets they store. CPU of the consumers and of Redis over the same interval.

Every event folds into a customer that already has a snapshot, so each customer's first event
of a batch reads its record from Redis unless the record cache holds it. Writes JSON to
``--out`` (default ``artifacts/bench_catchup.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from loadtests.bench_ingest import _isolated, _redis_cpu, event_body
from loadtests.population import customer_id, load_population
from router.devstack.infra import ManagedProcess, start_broker, start_redis
from router.settings import Settings, to_env
from router.state.keys import Keys
from router.state.store import connect

_CHUNK = 200_000


async def produce_backlog(settings: Settings, events: int, customers: int, seed: int, since: datetime) -> float:
    """``events`` keyed events from ``since`` to now in ascending event time, partitioned as Kafka's default
    partitioner does."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks=1, max_batch_size=1024 * 1024)
    await producer.start()
    rnd = random.Random(seed)
    partitioner = DefaultPartitioner()
    topic = settings.kafka.events_topic
    partitions = sorted(producer._metadata.partitions_for_topic(topic) or ())
    if not partitions:
        await producer.client.force_metadata_update()
        partitions = sorted(producer._metadata.partitions_for_topic(topic) or ())
    window_s = (datetime.now(UTC) - since).total_seconds()
    t0 = time.perf_counter()
    try:
        for first in range(0, events, _CHUNK):
            batches = {p: producer.create_batch() for p in partitions}
            sends = []
            for i in range(first, min(events, first + _CHUNK)):
                cid = customer_id(rnd.randrange(customers))
                key = cid.encode()
                at = (since + timedelta(seconds=window_s * i / events)).isoformat()
                value = event_body(rnd, f"k{seed}-{i}", cid, at)
                p = partitioner(key, partitions, partitions)
                if batches[p].append(key=key, value=value, timestamp=None) is None:
                    batches[p].close()
                    sends.append(await producer.send_batch(batches[p], topic, partition=p))
                    batches[p] = producer.create_batch()
                    batches[p].append(key=key, value=value, timestamp=None)
            for p, batch in batches.items():
                batch.close()
                sends.append(await producer.send_batch(batch, topic, partition=p))
            await asyncio.gather(*sends)
            done = min(events, first + _CHUNK)
            print(f"  produced {done:,} events ({done / (time.perf_counter() - t0):,.0f}/s)", flush=True)
    finally:
        await producer.stop()
    return time.perf_counter() - t0


async def catch_up(settings: Settings, events: int, processes: int, timeout: float) -> dict[str, float]:
    """``processes`` × ``router consume`` from no stored offsets until the state covers ``events``."""
    env = {**os.environ, **to_env(settings)}
    key = Keys(settings.redis.prefix).offsets(settings.kafka.group_id, settings.kafka.events_topic)
    client = connect(settings.redis.url, cluster=False)
    redis0 = await _redis_cpu(client)
    started = time.perf_counter()
    procs = [
        ManagedProcess(f"consume{i}", [sys.executable, "-m", "router.cli", "consume"], env=env)
        for i in range(processes)
    ]
    try:
        first_at = 0.0
        first = done = 0
        last_print = started
        deadline = time.monotonic() + timeout
        while done < events:
            if time.monotonic() > deadline or not all(p.running for p in procs):
                raise RuntimeError("did not catch up: " + " | ".join(p.tail(5) for p in procs))
            await asyncio.sleep(0.05)
            done = sum(int(v) for v in (await client.hgetall(key)).values())
            now = time.perf_counter()
            if done and not first_at:
                first_at, first = now, done
            if now - last_print >= 30:
                last_print = now
                print(f"  {done:,} of {events:,} applied after {now - started:.0f} s", flush=True)
        finished = time.perf_counter()
        cpu = sum(sum(psutil.Process(p.pid).cpu_times()[:2]) for p in procs)
        redis_cpu = await _redis_cpu(client) - redis0
        return {
            "processes": processes,
            "catch_up_seconds": finished - started,
            "startup_seconds": first_at - started,
            "applying_events_per_s": (events - first) / (finished - first_at),
            "events_per_s_overall": events / (finished - started),
            "consumer_cpu_us_per_event": cpu / events * 1e6,
            "redis_cpu_us_per_event": redis_cpu / events * 1e6,
        }
    finally:
        for p in procs:
            p.stop()
        await client.aclose()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    broker = start_broker()
    redis_server = start_redis()
    try:
        base = Settings.from_env()  # ROUTER_STREAM_* etc. tune the consumers under test
        runs = []
        for processes in args.processes:
            token = f"catchup{int(time.time())}p{processes}"
            settings = await _isolated(base, broker.bootstrap, redis_server.url, token, args)
            # the population as the consumers left it when they went down, the backlog's events after it
            down_at = datetime.now(UTC) - timedelta(hours=args.backlog_hours)
            print(f"loading {args.customers:,} customers ...", flush=True)
            load_s = await asyncio.to_thread(load_population, settings, args.customers, as_of=down_at.timestamp())
            print(f"  loaded in {load_s:.0f} s; producing {args.events:,} events ...", flush=True)
            produce_s = await produce_backlog(settings, args.events, args.customers, args.seed, down_at)
            print(f"  produced in {produce_s:.0f} s; starting {processes} × router consume", flush=True)
            result = await catch_up(settings, args.events, processes, args.timeout)
            print(
                f"caught up {args.events:,} events with {processes} process(es) in {result['catch_up_seconds']:.0f} s "
                f"({result['applying_events_per_s']:,.0f} events/s while applying, "
                f"{result['consumer_cpu_us_per_event']:.1f} us consumer CPU per event)",
                flush=True,
            )
            runs.append({**result, "load_seconds": load_s, "produce_seconds": produce_s})
            await _drop(settings)
        return {
            "started_at": args.started_at,
            "customers": args.customers,
            "events": args.events,
            "backlog_hours": args.backlog_hours,
            "partitions": args.partitions,
            "batch_max": args.batch,
            "lanes": base.stream.lanes,
            "cache_customers": base.stream.cache_customers,
            "load_average_at_start": args.load_average,
            "cpu_count": os.cpu_count(),
            "runs": runs,
        }
    finally:
        redis_server.close()
        broker.stop()


async def _drop(settings: Settings) -> None:
    """Free the run's keys before the next run loads its own population (the private Redis of this run)."""
    client = connect(settings.redis.url, cluster=False)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--processes", type=int, nargs="+", default=[1], help="one run per group size")
    parser.add_argument(
        "--backlog-hours", type=float, default=2.0, help="how long the consumers were down: the events' time span"
    )
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--batch", type=int, default=Settings().stream.batch_max)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds a group may take to catch up")
    parser.add_argument("--out", default="artifacts/bench_catchup.json")
    args = parser.parse_args(argv)
    args.started_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    args.load_average = list(os.getloadavg())
    result = asyncio.run(main_async(args))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
