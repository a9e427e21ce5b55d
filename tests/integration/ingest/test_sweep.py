"""The sweep on a real broker and a real Redis: silent customers are rescored, safely.

The consumers here run on a clock the test moves (``consumer_stack(clock=...)``): the customer's
events are folded and scored on the day they happened, then the clock jumps to today and only the
sweep, no event, can notice that the customer went quiet.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import msgspec
from aiokafka import TopicPartition

from router.core.kpi import HIGH_RISK_BIN
from router.ingest.consumer import StateConsumer, consumer_stack
from router.ingest.sweep import SweepReport
from router.settings import Settings
from router.state.records import SWEEP_MARK, CustomerRecord
from schemas.alerts import ChurnAlert
from schemas.events import CustomerEvent, CustomerProfile, SubscriptionChanged, Usage
from tests.conftest import SettingsFactory
from tests.support.helpers import drain_topic, produce, running_consumer, state_store, wait_until_caught_up

TODAY = time.time()
LAST_SEEN = datetime.fromtimestamp(TODAY, UTC).replace(microsecond=0) - timedelta(days=60)


def _active_until(cid: str, last: datetime, days: int = 45) -> list[CustomerEvent]:
    """A healthy subscriber using the product every day for ``days`` days, until ``last``."""
    start = last - timedelta(days=days)
    events: list[CustomerEvent] = [
        CustomerProfile(event_id=f"{cid}-p", customer_id=cid, occurred_at=start, segment="smb", plan="team",
                        signup_date=(last - timedelta(days=400)).date(), acquisition_cost=300.0),
        SubscriptionChanged(event_id=f"{cid}-s", customer_id=cid, occurred_at=start, change="new", plan="team",
                            mrr_delta=49.0),
    ]  # fmt: skip
    events += [
        Usage(event_id=f"{cid}-u{d}", customer_id=cid, occurred_at=last - timedelta(days=d), logins=5,
              features_used=10)
        for d in range(days - 1, -1, -1)
    ]  # fmt: skip
    return events


async def _alerts(s: Settings, expected: int, timeout: float = 10) -> list[ChurnAlert]:
    records = await drain_topic(s, s.kafka.alerts_topic, expected=expected, timeout=timeout)
    return [msgspec.json.decode(r.value, type=ChurnAlert) for r in records]  # type: ignore[attr-defined]


async def _until(condition: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached in time")


async def test_a_customer_silent_for_60_days_raises_an_alert_with_no_new_event(settings: SettingsFactory) -> None:
    s = settings(stream={"sweep_interval_s": 0.2})
    events = _active_until("QUIET", LAST_SEEN)
    await produce(s, events)
    now = [LAST_SEEN.timestamp() + 3600]  # the consumer's clock: an hour after the last event, 60 days ago
    async with running_consumer(s, clock=lambda: now[0]) as worker:
        await wait_until_caught_up(worker, s, len(events))
        h = worker.store.customer_key("QUIET")
        then = (await worker.store.read_customer(h)).scores
        assert then is not None and then.churn < 0.2 and not then.alerted
        await asyncio.sleep(1.0)  # sweeps run on the old clock: whatever they rescore stays calm
        assert await _alerts(s, 0, timeout=1) == []

        now[0] = TODAY  # 60 days pass; the customer sends nothing

        async def alerted() -> bool:
            scores = (await worker.store.read_customer(h)).scores
            return scores is not None and scores.alerted

        await _until(alerted)
        rescored = await worker.store.read_customer(h)
        await asyncio.sleep(1.0)  # more sweeps (due again later) must not alert again
        counters = await worker.store.portfolio()
    alerts = await _alerts(s, 1)
    assert [a.customer_id for a in alerts] == ["QUIET"] and alerts[0].churn_risk >= 70.0
    assert alerts[0].reasons and alerts[0].model_version == "churn-v1"
    scores = rescored.scores
    assert scores is not None and scores.churn >= 0.7 and scores.scored_at == int(TODAY)
    assert rescored.marks[SWEEP_MARK] >= 1 and rescored.snapshot is not None
    assert rescored.snapshot.events_applied == len(events)  # the snapshot is untouched: no event was invented
    # The portfolio moved with it: one customer, in a high-risk churn bin, its CLV and histogram bin current.
    churn_bins = {b: n for b, n in counters.churn_hist.items() if n}
    assert list(churn_bins.values()) == [1] and min(churn_bins) >= HIGH_RISK_BIN
    assert {b: n for b, n in counters.clv_hist.items() if n} == {scores.clv_bin: 1}
    assert abs(counters.totals["clv_sum"] - scores.clv) < 1e-6
    assert scores.clv < then.clv  # a customer likely to leave is worth less


async def _joined(workers: list[StateConsumer], partitions: int, timeout: float = 30.0) -> None:
    async def split() -> bool:
        owned = [tp.partition for w in workers for tp in w.assigned]
        return sorted(owned) == list(range(partitions)) and all(w.assigned for w in workers)

    await _until(split, timeout)


async def test_each_consumer_sweeps_only_its_own_partitions_exactly_once(settings: SettingsFactory) -> None:
    s = settings(kafka={"partitions": 4}, stream={"sweep_interval_s": 0})  # sweeps run when the test says
    customers = [f"M{i:02d}" for i in range(24)]
    events = [e for cid in customers for e in _active_until(cid, LAST_SEEN, days=5)]
    await produce(s, events)
    now = [LAST_SEEN.timestamp() + 3600]
    stop = asyncio.Event()
    async with consumer_stack(s, clock=lambda: now[0]) as a, consumer_stack(s, clock=lambda: now[0]) as b:
        tasks = [asyncio.create_task(w.run(stop)) for w in (a, b)]
        try:
            await _joined([a, b], 4)
            await wait_until_caught_up(a, s, len(events))
            now[0] = TODAY
            owned = {w: {tp.partition for tp in w.assigned} for w in (a, b)}
            reports = await asyncio.gather(a.sweeper.sweep(), b.sweeper.sweep())
            assert {tp.partition for tp in a.assigned} == owned[a]  # no rebalance in between
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        async with state_store(s) as store:
            records = await store.read_customers([store.customer_key(c) for c in customers])
            counters = await store.portfolio()
    partition_of = {c: _partition(r) for c, r in zip(customers, records, strict=True)}
    for worker, report in zip((a, b), reports, strict=True):
        mine = [c for c in customers if partition_of[c] in owned[worker]]
        assert report.rescored == len(mine) and report.conflicts == 0, (report, len(mine))
    assert all(r.marks[SWEEP_MARK] == 1 for r in records)  # every customer rescored once, by one consumer
    assert all(r.scores is not None and r.scores.scored_at == int(TODAY) for r in records)
    assert sum(counters.churn_hist.values()) == len(customers) == sum(counters.clv_hist.values())


def _partition(record: CustomerRecord) -> int:
    (partition,) = (p for p in record.marks if p != SWEEP_MARK)
    return partition


async def test_a_racing_event_write_wins_over_the_sweep_and_a_stale_writer_loses_to_it(
    settings: SettingsFactory,
) -> None:
    s = settings(kafka={"partitions": 1}, stream={"sweep_interval_s": 0})
    events = _active_until("RACE", LAST_SEEN, days=5)
    await produce(s, events[:-2])
    tp = TopicPartition(s.kafka.events_topic, 0)
    now = [LAST_SEEN.timestamp() + 3600]
    async with running_consumer(s, clock=lambda: now[0]) as owner:
        await wait_until_caught_up(owner, s, len(events) - 2)
        h = owner.store.customer_key("RACE")
        now[0] = TODAY
        # 1. The sweep claims and reads the customer; an event is written before the sweep writes.
        keys, records = await owner.sweeper.fetch(0, int(TODAY))
        assert keys == [h]
        await produce(s, events[-2:-1])
        await wait_until_caught_up(owner, s, len(events) - 1)
        written = await owner.store.read_customer(h)
        ok = await owner.sweeper.step(0, keys, records, int(TODAY), SweepReport())
        assert ok == [False]  # the sweep's write is dropped
        after = await owner.store.read_customer(h)
        assert after.raw_marks == written.raw_marks and after.scores == written.scores
        assert after.snapshot is not None and after.snapshot.events_applied == len(events) - 1
        # 2. A writer that read the record before a sweep wrote it (a zombie after a rebalance) loses.
        stale = await owner.store.read_customer(h)
        now[0] = TODAY + 2 * 86_400  # due again: at the latest a day after it was scored
        report = await owner.sweeper.sweep()
        assert report.rescored == 1
        zombie = owner.planner.plan({"RACE": [_pending(tp, len(events) - 1, events[-1])]}, [h], [stale], int(now[0]))
        assert await owner.store.apply(zombie.ops) == [False]
        # The owner applies the same event on its own and reads the swept record first: all consistent.
        await produce(s, events[-1:])
        await wait_until_caught_up(owner, s, len(events))
        final = await owner.store.read_customer(h)
        counters = await owner.store.portfolio()
    assert final.snapshot is not None and final.snapshot.events_applied == len(events)
    assert final.marks[SWEEP_MARK] == 1 and final.marks[0] == len(events) - 1
    assert sum(counters.churn_hist.values()) == 1 and {b: n for b, n in counters.clv_hist.items() if n} == {
        final.scores.clv_bin: 1  # type: ignore[union-attr]
    }


def _pending(tp: TopicPartition, offset: int, event: CustomerEvent) -> object:
    from aiokafka.structs import ConsumerRecord

    from router.ingest.planning import Pending

    raw = msgspec.json.encode(event)
    record = ConsumerRecord(
        topic=tp.topic, partition=tp.partition, offset=offset, timestamp=0, timestamp_type=0, key=b"RACE",
        value=raw, checksum=None, serialized_key_size=4, serialized_value_size=len(raw), headers=(),
    )  # fmt: skip
    return Pending(record, event)
