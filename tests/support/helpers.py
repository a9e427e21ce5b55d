"""Shared test helpers: produce events, run a consumer in-process, read state back."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from router.core.identity import IdentityHasher
from router.core.reducer import Snapshot
from router.ingest.consumer import StateConsumer, consumer_stack
from router.settings import Settings
from router.state.records import CustomerRecord
from router.state.store import StateStore, connect_redis
from schemas.events import CustomerEvent

_enc = msgspec.json.Encoder()


def hasher_of(settings: Settings) -> IdentityHasher:
    return IdentityHasher.from_settings(settings.identity)


async def produce(settings: Settings, events: Sequence[CustomerEvent | tuple[bytes | None, bytes | None]]) -> None:
    """Send events (keyed by customer) or raw (key, value) pairs, in order, and wait for acks."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = []
        for e in events:
            if isinstance(e, tuple):
                key, value = e
            else:
                key, value = e.customer_id.encode(), _enc.encode(e)
            futures.append(await producer.send(settings.kafka.events_topic, value=value, key=key))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


@contextlib.asynccontextmanager
async def running_consumer(
    settings: Settings, *, clock: Callable[[], float] = time.time
) -> AsyncIterator[StateConsumer]:
    """A state consumer running in this event loop; stopped and awaited on exit (``clock``: its "now")."""
    stop = asyncio.Event()
    async with consumer_stack(settings, clock=clock) as worker:
        task = asyncio.create_task(worker.run(stop))
        try:
            yield worker
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)


async def wait_until_caught_up(
    worker: StateConsumer, settings: Settings, expected_next: int, timeout: float = 60
) -> None:
    """Wait until the offsets stored in Redis cover ``expected_next`` records of the events topic."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stored = await worker.store.stored_offsets(settings.kafka.group_id, settings.kafka.events_topic)
        if sum(stored.values()) >= expected_next:
            return
        await asyncio.sleep(0.1)
    stored = await worker.store.stored_offsets(settings.kafka.group_id, settings.kafka.events_topic)
    raise AssertionError(f"consumer did not catch up: stored offsets {stored}, want {expected_next} records")


@contextlib.asynccontextmanager
async def state_store(settings: Settings) -> AsyncIterator[StateStore]:
    client = connect_redis(settings.redis, timeout_s=None)
    try:
        yield StateStore(client, settings.redis.prefix, hasher_of(settings))
    finally:
        await client.aclose()


async def read_snapshot(store: StateStore, customer_id: str) -> Snapshot | None:
    rec: CustomerRecord = await store.read_customer(store.customer_key(customer_id))
    return rec.snapshot


async def drain_topic(settings: Settings, topic: str, expected: int, timeout: float = 30) -> list[object]:
    """Read a whole topic from the beginning until ``expected`` records (or the timeout)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=settings.kafka.bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    out: list[object] = []
    try:
        deadline = time.monotonic() + timeout
        while len(out) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                out.extend(records)
        # a little longer, to see anything beyond what was expected
        for records in (await consumer.getmany(timeout_ms=1000)).values():
            out.extend(records)
    finally:
        await consumer.stop()
    return out


async def compare_with_reference(
    s: Settings, per_customer: dict[str, list[CustomerEvent]]
) -> tuple[list[str], int, int]:
    """Customers whose Redis snapshot differs from the reducer's fold of their acknowledged events,
    with the orders and tickets lost and applied twice among them (the Jepsen-style check)."""
    from router.core.reducer import fold_all

    hasher = hasher_of(s)
    wrong: list[str] = []
    lost = duplicated = 0
    async with state_store(s) as store:
        ids = sorted(per_customer)
        records = await store.read_customers([store.customer_key(c) for c in ids])
    for cid, rec in zip(ids, records, strict=True):
        expected = fold_all(per_customer[cid], lateness_s=s.stream.lateness_s, hasher=hasher)
        assert expected is not None
        got = rec.snapshot
        if got != expected:
            wrong.append(cid)
            have = (got.orders_total + got.tickets_total) if got else 0
            want = expected.orders_total + expected.tickets_total
            lost += max(0, want - have)
            duplicated += max(0, have - want)
    return wrong, lost, duplicated


def event_stream(
    rnd: random.Random,
    n_events: int,
    n_customers: int,
    *,
    prefix: str = "N",
    days: int = 20,
    max_step_s: int = 600,
    retry_rate: float = 0.0,
) -> tuple[list[CustomerEvent], dict[str, list[CustomerEvent]]]:
    """Keyed usage/order/ticket events, each customer's in time order, interleaved at random.

    Returns (what the producer sends, each customer's unique events). With ``retry_rate`` some
    events are sent twice, as a producer retry does (same event id, a new offset).
    """
    from datetime import UTC, datetime, timedelta

    from schemas.events import OrderPlaced, TicketOpened, Usage

    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=days)
    clock = {f"{prefix}{c:05d}": start for c in range(n_customers)}
    per: dict[str, list[CustomerEvent]] = {}
    stream: list[CustomerEvent] = []
    for i in range(n_events):
        cid = f"{prefix}{rnd.randrange(n_customers):05d}"
        clock[cid] += timedelta(seconds=rnd.randint(1, max_step_s))
        t = clock[cid]
        r = rnd.random()
        eid = f"{prefix.lower()}{i}"
        e: CustomerEvent
        if r < 0.5:
            e = Usage(event_id=eid, customer_id=cid, occurred_at=t, logins=rnd.randint(0, 5))
        elif r < 0.85:
            e = OrderPlaced(event_id=eid, customer_id=cid, occurred_at=t, order_id=f"o{i}", amount=rnd.randint(1, 99))
        else:
            e = TicketOpened(event_id=eid, customer_id=cid, occurred_at=t, ticket_id=f"t{i}")
        per.setdefault(cid, []).append(e)
        stream.append(e)
        if retry_rate and rnd.random() < retry_rate:
            stream.append(e)
    return stream, per
