"""The demo producer on a real broker: backfill, then live traffic; a clean stop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import msgspec
from aiokafka import AIOKafkaConsumer

from router.devstack.demo import produce_demo
from router.settings import Settings
from schemas.events import (
    TicketOpened,
    Usage,
    event_decoder,
)


async def _consume_all(settings: Settings, expect_at_least: int, timeout_s: float = 30.0) -> list[tuple[bytes, bytes]]:
    consumer = AIOKafkaConsumer(
        settings.kafka.events_topic,
        bootstrap_servers=settings.kafka.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    got: list[tuple[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                got.extend((r.key, r.value) for r in records if r.key is not None and r.value is not None)
            if not batch and len(got) >= expect_at_least:
                break
    finally:
        await consumer.stop()
    return got


async def test_produce_demo_backfills_then_goes_live(settings: Callable[..., Settings]) -> None:
    s = settings()
    began = datetime.now(UTC)
    await produce_demo(s, customers=60, history_days=30, rate=100.0, duration_s=1.5, seed=5)
    records = await _consume_all(s, expect_at_least=500)
    events = [event_decoder.decode(v) for _, v in records]
    assert all(k == e.customer_id.encode() for (k, _), e in zip(records, events, strict=True))
    assert {e.customer_id for e in events} == {f"C{i:06d}" for i in range(1, 61)}
    live = [e for e in events if e.occurred_at >= began]
    backfill = [e for e in events if e.occurred_at < began]
    assert backfill and min(e.occurred_at for e in backfill) >= began - timedelta(days=30, minutes=1)
    assert 50 <= len(live) <= 200  # ~100/s for 1.5 s
    # Per customer (= per partition), event times never go backwards: nothing is "too late".
    last: dict[str, datetime] = {}
    for e in events:
        assert e.occurred_at >= last.get(e.customer_id, e.occurred_at)
        last[e.customer_id] = e.occurred_at
    assert len({e.event_id for e in events}) == len(events)


async def test_produce_demo_stops_cleanly_when_cancelled(settings: Callable[..., Settings]) -> None:
    s = settings()
    task = asyncio.create_task(produce_demo(s, customers=20, history_days=10, rate=50.0, duration_s=None, seed=1))
    await asyncio.sleep(3.0)
    assert not task.done()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert task.cancelled()
    records = await _consume_all(s, expect_at_least=1)
    assert any(isinstance(event_decoder.decode(v), TicketOpened | Usage) for _, v in records)
    msgspec.json.decode(records[0][1])
