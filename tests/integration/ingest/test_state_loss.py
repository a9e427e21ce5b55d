"""Redis loses state under the consumers' feet; the snapshots must still equal the reference fold.

* Two consumers in one group, and the private Redis restarts empty (it keeps nothing on disk).
  The consumer owning the partitions that see traffic first rebuilds them and stores their
  offsets; the other one must still notice that its own partitions lost their state.
* A lost tail (an AOF tail or a failover to a lagging replica): Redis comes back with the state
  of a while ago, offsets included, so the offsets hash exists but is behind.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from router.settings import Settings
from schemas.events import CustomerEvent
from tests.conftest import SettingsFactory
from tests.support.helpers import (
    compare_with_reference,
    drain_topic,
    event_stream,
    produce,
    running_consumer,
    state_store,
    wait_until_caught_up,
)


async def _assigned(*workers: Any, partitions: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        owned = [tp.partition for w in workers for tp in w.assigned]
        if sorted(owned) == list(range(partitions)) and all(w.assigned for w in workers):
            return
        assert time.monotonic() < deadline, f"partitions not split between the consumers: {owned}"
        await asyncio.sleep(0.1)


async def _converges(s: Settings, per_customer: dict[str, list[CustomerEvent]], timeout: float = 40.0) -> list[str]:
    """Customers whose snapshot still differs from the reference fold once ``timeout`` is up (or none)."""
    deadline = time.monotonic() + timeout
    while True:
        wrong, lost, duplicated = await compare_with_reference(s, per_customer)
        if not wrong or time.monotonic() > deadline:
            if wrong:
                print(f"\n[state-loss] wrong={len(wrong)} lost={lost} duplicated={duplicated}")
            return wrong
        await asyncio.sleep(0.5)


async def test_two_consumers_each_rebuild_their_partitions_after_redis_restarts_empty(
    settings: SettingsFactory, redis_server: Any
) -> None:
    s = settings(kafka={"partitions": 4})
    stream, per_customer = event_stream(random.Random(2024), 2_400, 60)
    half = len(stream) // 2
    await produce(s, stream[:half])
    partition_of = {
        r.key.decode(): r.partition  # type: ignore[attr-defined]
        for r in await drain_topic(s, s.kafka.events_topic, half)
    }
    async with running_consumer(s) as a, running_consumer(s) as b:
        await _assigned(a, b, partitions=4)
        await wait_until_caught_up(a, s, half)
        a_parts = {tp.partition for tp in a.assigned}

        redis_server.stop()  # nothing persisted: it comes back empty
        redis_server.start()

        # Traffic for a's partitions first: a notices, replays them and stores their offsets...
        rest = stream[half:]
        first = [e for e in rest if partition_of.get(e.customer_id) in a_parts]
        a_customers = {cid: evs for cid, evs in per_customer.items() if partition_of.get(cid) in a_parts}
        await produce(s, first)
        assert not await _converges(s, a_customers), "the first consumer did not rebuild its partitions"
        # ...then for b's: the offsets hash exists again, but not b's partitions in it.
        await produce(s, [e for e in rest if partition_of.get(e.customer_id) not in a_parts])
        await wait_until_caught_up(a, s, len(stream))
        wrong = await _converges(s, per_customer)
    assert not wrong, f"{len(wrong)} of {len(per_customer)} customers lost their history, e.g. {wrong[:5]}"


async def test_a_lost_tail_is_replayed_from_the_offsets_redis_still_has(settings: SettingsFactory) -> None:
    s = settings(kafka={"partitions": 2})
    stream, per_customer = event_stream(random.Random(77), 1_800, 40)
    parts = stream[:600], stream[600:1200], stream[1200:]
    async with running_consumer(s) as worker:
        await produce(s, parts[0])
        await wait_until_caught_up(worker, s, 600)
        async with state_store(s) as store:
            client = store.client
            pattern = f"{s.redis.prefix}:*"
            earlier = {key: await client.dump(key) async for key in client.scan_iter(match=pattern, count=1000)}

            await produce(s, parts[1])
            await wait_until_caught_up(worker, s, 1200)

            # The tail is lost: Redis is back at the state after the first part, offsets included.
            now = [key async for key in client.scan_iter(match=pattern, count=1000)]
            await client.delete(*now)
            for key, dumped in earlier.items():
                await client.restore(key, 0, dumped, replace=True)

            await produce(s, parts[2])
            await wait_until_caught_up(worker, s, len(stream))
            wrong = await _converges(s, per_customer)
            histogram = await store.histogram()
            counters = await store.portfolio()
    assert not wrong, f"{len(wrong)} of {len(per_customer)} customers lost the events of the lost tail"
    # the population figures were rolled back and replayed with the snapshots: each customer once
    assert sum(histogram.values()) == len(per_customer) == counters.totals["customers"]
