"""The consumer while Redis is unreachable: it stays ready, and it publishes each dead letter once.

Redis is reached through a TCP proxy that black-holes it (nothing answers, nothing is reset) or
refuses it; the broker and the dead-letter topic are real.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
import pytest
from aiokafka import TopicPartition

from router.devstack.infra import free_port
from router.ingest.consumer import consumer_stack
from router.ingest.planning import Plan
from router.settings import Settings
from schemas.events import OrderPlaced
from tests.conftest import SettingsFactory
from tests.support.helpers import drain_topic, produce, running_consumer, wait_until_caught_up
from tests.support.tcp_proxy import TcpProxy

NOW = datetime.now(UTC).replace(microsecond=0)
_enc = msgspec.json.Encoder()


def _via(s: Settings, proxy: TcpProxy) -> Settings:
    return msgspec.structs.replace(s, redis=msgspec.structs.replace(s.redis, url=f"redis://{proxy.address}/0"))


def _orders(cid: str, n: int, start: int = 0) -> list[OrderPlaced]:
    t = NOW - timedelta(hours=2)
    return [
        OrderPlaced(event_id=f"{cid}-{i}", customer_id=cid, occurred_at=t + timedelta(seconds=i), order_id=f"o{i}",
                    amount=10.0)
        for i in range(start, start + n)
    ]  # fmt: skip


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_the_consumer_stays_ready_while_redis_is_black_holed(
    settings: SettingsFactory, redis_server: Any
) -> None:
    """Readiness means the consume loop is alive, not that Redis answers (see StateConsumer.ready).

    Each batch attempt waits out the Redis socket timeout (5 s) in a black hole; with
    ``stuck_after_s`` below that, readiness must still not flap: the loop is busy, not stuck.
    """
    port = free_port()
    s = settings(stream={"health_port": port, "stuck_after_s": 3.0})
    events = _orders("RB1", 20)
    with TcpProxy("127.0.0.1", redis_server.port) as proxy:
        s_c = _via(s, proxy)
        async with running_consumer(s_c) as worker, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            await produce(s, events[:10])
            await wait_until_caught_up(worker, s_c, 10)
            proxy.pause()
            await produce(s, events[10:])
            statuses: list[int] = []
            texts: list[str] = []
            redis_up: list[float | None] = []
            end = time.monotonic() + 10.0
            while time.monotonic() < end:
                r = await http.get("/health/ready", timeout=2.0)
                statuses.append(r.status_code)
                texts.append(r.text)
                redis_up.append(_metric((await http.get("/metrics", timeout=2.0)).text, "router_redis_up"))
                await asyncio.sleep(0.5)
            proxy.resume()
            await wait_until_caught_up(worker, s_c, 20)
    failed = [t for st, t in zip(statuses, texts, strict=True) if st != 200]
    assert not failed, f"readiness failed {len(failed)} of {len(statuses)} times during the outage: {failed[:2]}"
    assert 0.0 in redis_up, f"router_redis_up never showed the outage: {redis_up}"
    assert any("redis unavailable" in t for t in texts), texts[-1]


async def test_a_redis_outage_during_a_batch_with_a_poison_record_dead_letters_it_once(
    settings: SettingsFactory, redis_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A failed batch is retried whole; its dead letter must not be published again each time.

    Two outages: Redis out of memory (reads answer, every write fails: the batch fails after its
    dead letter was acknowledged, again and again), then Redis unreachable altogether.
    """
    s = settings(kafka={"partitions": 1})
    with TcpProxy("127.0.0.1", redis_server.port) as proxy:
        s_c = _via(s, proxy)
        async with running_consumer(s_c) as worker:
            await produce(s, _orders("DQ1", 2))
            await wait_until_caught_up(worker, s_c, 2)
            admin = worker.store.client
            await admin.config_set("maxmemory", 1)  # noeviction: every write is refused with OOM
            try:
                await produce(s, [(b"DQ1", b"this is not json"), *_raw(_orders("DQ1", 2, 2))])
                await asyncio.sleep(4.0)  # the batch is retried several times (backoff 0.2, 0.4, 0.8, 1.6 s)
            finally:
                await admin.config_set("maxmemory", 0)
            await wait_until_caught_up(worker, s_c, 5, timeout=30)
            failures = sum("batch failed" in r.getMessage() for r in caplog.records)
            with proxy.outage():  # connections cut, new ones refused
                await produce(s, [(b"DQ1", b"[1, 2]"), *_raw(_orders("DQ1", 2, 4))])
                await asyncio.sleep(3.0)
            await wait_until_caught_up(worker, s_c, 8, timeout=30)
        dead = await drain_topic(s, s.kafka.dead_letter_topic, expected=2, timeout=10)
    assert failures >= 3, f"the batch failed only {failures} times: the outage did not hit it"
    origins = sorted(int(dict(r.headers)["dlq.origin.offset"]) for r in dead)  # type: ignore[attr-defined]
    assert origins == [2, 5], f"{len(dead)} dead letters for two poison records (origin offsets {origins})"


def _raw(events: list[OrderPlaced]) -> list[tuple[bytes, bytes]]:
    return [(e.customer_id.encode(), _enc.encode(e)) for e in events]


async def test_a_dead_letter_published_before_a_failed_write_is_not_published_again_after_a_restart(
    settings: SettingsFactory, redis_server: Any
) -> None:
    """The dead letter is acknowledged, then Redis fails before the batch's state is written, and the
    consumer dies: the one that takes over redelivers the batch and must not dead-letter it again."""
    s = settings(kafka={"partitions": 1})
    good = [_enc.encode(e) for e in _orders("DR1", 2)]
    await produce(s, [(b"DR1", good[0]), (b"DR1", b"{broken"), (b"DR1", good[1])])
    records = sorted(await drain_topic(s, s.kafka.events_topic, 3), key=lambda r: r.offset)  # type: ignore[attr-defined]
    tp = TopicPartition(s.kafka.events_topic, 0)
    with TcpProxy("127.0.0.1", redis_server.port) as proxy:
        s_c = _via(s, proxy)
        async with consumer_stack(s_c) as first:
            await _assigned(first)
            publish = first._publish

            async def publish_then_lose_redis(plan: Plan) -> None:
                await publish(plan)
                if plan.dead:
                    proxy.refuse = True
                    proxy.cut()

            first._publish = publish_then_lose_redis  # type: ignore[method-assign]
            with pytest.raises(Exception):  # noqa: B017 - whatever the Redis client raises
                await first.process_batch({tp: records})
        proxy.refuse = False  # the first consumer is gone; its successor finds Redis back
        async with consumer_stack(s_c) as second:
            await _assigned(second)
            await second.process_batch({tp: records})
            await second.process_batch({tp: records})  # and a redelivery within the same process
    dead = await drain_topic(s, s.kafka.dead_letter_topic, expected=1, timeout=10)
    origins = [int(dict(r.headers)["dlq.origin.offset"]) for r in dead]  # type: ignore[attr-defined]
    assert origins == [1], f"{len(dead)} dead letters for one poison record (origin offsets {origins})"


async def _assigned(worker: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not worker.assigned:
        assert time.monotonic() < deadline, "no partition assigned"
        await asyncio.sleep(0.1)
