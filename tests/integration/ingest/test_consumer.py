"""The state consumer on a real broker and a real Redis: exactly-once effect, dead letters, erasure."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import msgspec
from aiokafka import TopicPartition
from prometheus_client import REGISTRY

from router.churn.model import ChurnModel
from router.core.features import features
from router.core.reducer import DAY, fold_all
from router.ingest.consumer import consumer_stack
from router.state.records import decode_snapshot, encode_snapshot
from schemas.alerts import ChurnAlert
from schemas.events import (
    CustomerEvent,
    CustomerProfile,
    ErasureRequested,
    OrderPlaced,
    Outcome,
    SubscriptionChanged,
    TicketOpened,
    TicketResolved,
    Usage,
)
from tests.conftest import SettingsFactory
from tests.support.helpers import (
    drain_topic,
    hasher_of,
    produce,
    read_snapshot,
    running_consumer,
    state_store,
    wait_until_caught_up,
)

NOW = datetime.now(UTC).replace(microsecond=0)


def _history(customer: str, n: int, rnd: random.Random) -> list[CustomerEvent]:
    t = NOW - timedelta(days=60)
    events: list[CustomerEvent] = [
        CustomerProfile(event_id=f"{customer}-p", customer_id=customer, occurred_at=t, phones=["+49 30 5550100"])
    ]
    for i in range(n):
        t += timedelta(minutes=rnd.randint(1, 600))
        kind = rnd.random()
        eid = f"{customer}-{i}"
        if kind < 0.4:
            events.append(Usage(event_id=eid, customer_id=customer, occurred_at=t, logins=rnd.randint(0, 9)))
        elif kind < 0.7:
            amount = float(rnd.randint(5, 500))
            events.append(OrderPlaced(event_id=eid, customer_id=customer, occurred_at=t, order_id=eid, amount=amount))
        elif kind < 0.9:
            events.append(TicketOpened(event_id=eid, customer_id=customer, occurred_at=t, ticket_id=eid))
        else:
            events.append(
                SubscriptionChanged(event_id=eid, customer_id=customer, occurred_at=t, change="upgrade", mrr_delta=5.0)
            )
    return events


async def test_snapshots_equal_the_reference_fold_despite_redelivery_and_producer_retries(
    settings: SettingsFactory,
) -> None:
    s = settings(stream={"batch_max": 37})
    rnd = random.Random(11)
    per_customer = {f"C{i:03d}": _history(f"C{i:03d}", 40, rnd) for i in range(25)}
    stream: list[CustomerEvent] = [e for evs in per_customer.values() for e in evs]
    # producer retries: the same event (same event_id) sent again a little later
    retries = [e for e in stream if rnd.random() < 0.1]
    interleaved = sorted(stream + retries, key=lambda e: e.occurred_at)
    await produce(s, interleaved)

    async with running_consumer(s) as worker:
        await wait_until_caught_up(worker, s, len(interleaved))
    # second run of a fresh consumer: Redis offsets are deleted so Kafka redelivers everything
    async with state_store(s) as store:
        await store.client.delete(store.keys.offsets(s.kafka.group_id, s.kafka.events_topic))
    s2 = msgspec.structs.replace(s, kafka=msgspec.structs.replace(s.kafka, group_id=s.kafka.group_id + "-again"))
    async with running_consumer(s2) as worker:
        await wait_until_caught_up(worker, s2, len(interleaved))

    hasher = hasher_of(s)
    async with state_store(s) as store:
        for cid, events in per_customer.items():
            expected = fold_all(events, lateness_s=s.stream.lateness_s, hasher=hasher)
            got = await read_snapshot(store, cid)
            assert got == expected, cid
        # the phone index points at the customer; the key is a keyed hash, not the number
        keys = [k async for k in store.client.scan_iter(match=f"{s.redis.prefix}:*:p:*")]
        assert len(keys) == 1 and b"5550100" not in keys[0]
        assert await store.client.get(keys[0]) in {cid.encode() for cid in per_customer}


async def test_poison_events_go_to_the_dead_letter_topic_once_with_headers(settings: SettingsFactory) -> None:
    s = settings()
    good = [
        OrderPlaced(event_id=f"g{i}", customer_id="C1", occurred_at=NOW - timedelta(hours=5 - i), order_id=f"o{i}",
                    amount=10.0)
        for i in range(4)
    ]  # fmt: skip
    bad: list[tuple[bytes | None, bytes | None]] = [
        (b"C1", b"{not json"),
        (b"C1", b'{"type":"refund","event_id":"x","customer_id":"C1","occurred_at":"2026-01-01T00:00:00Z"}'),
        (b"C1", b'{"type":"order_placed","event_id":"y","customer_id":"C1","occurred_at":"2026-01-01T00:00:00",'
                b'"order_id":"o","amount":5}'),
        (b"C1", b'{"type":"order_placed","event_id":"z","customer_id":"C1","occurred_at":"2026-01-01T00:00:00Z",'
                b'"order_id":"o","amount":-5}'),
        (b"C1", None),
        (b"C1", b"\xff\xfe\x00garbage"),
    ]  # fmt: skip
    # too late: two days before the customer's newest event, beyond the 1-day bound
    too_late = OrderPlaced(event_id="late", customer_id="C1", occurred_at=NOW - timedelta(days=3), order_id="L",
                           amount=99.0)  # fmt: skip
    await produce(s, [good[0], bad[0], good[1], *bad[1:], good[2], too_late, good[3]])
    total = len(good) + len(bad) + 1

    async with running_consumer(s) as worker:
        await wait_until_caught_up(worker, s, total)
        dead = await drain_topic(s, s.kafka.dead_letter_topic, expected=len(bad) + 1)
    assert len(dead) == len(bad) + 1
    reasons = sorted(dict(r.headers)["dlq.error.reason"].decode() for r in dead)  # type: ignore[attr-defined]
    assert reasons == sorted(["undecodable", "schema_invalid", "schema_invalid", "schema_invalid", "empty_value",
                              "undecodable", "too_late"])  # fmt: skip
    for r in dead:
        headers = dict(r.headers)  # type: ignore[attr-defined]
        assert headers["dlq.origin.topic"] == s.kafka.events_topic.encode()
        assert int(headers["dlq.origin.offset"]) >= 0 and headers["dlq.error.class"]
    originals = {v for _, v in bad if v is not None}
    assert {r.value for r in dead if r.value is not None} >= originals  # type: ignore[attr-defined]
    async with state_store(s) as store:
        snap = await read_snapshot(store, "C1")
    assert snap is not None and snap.orders_total == 4  # every good event applied, the late one not


async def test_erasure_removes_snapshot_index_and_histogram_and_replay_does_not_resurrect(
    settings: SettingsFactory,
) -> None:
    s = settings()
    profile = CustomerProfile(event_id="p", customer_id="C9", occurred_at=NOW - timedelta(days=2),
                              phones=["+44 20 7946 0018"], emails=["Jane.Doe@example.com"])  # fmt: skip
    order = OrderPlaced(event_id="o", customer_id="C9", occurred_at=NOW - timedelta(days=1), order_id="o", amount=50)
    erase = ErasureRequested(event_id="x", customer_id="C9", occurred_at=NOW - timedelta(hours=1))
    await produce(s, [profile, order])
    async with running_consumer(s) as worker:
        await wait_until_caught_up(worker, s, 2)
        async with state_store(s) as store:
            assert len([k async for k in store.client.scan_iter(match=f"{s.redis.prefix}:*")]) >= 4
        await produce(s, [erase, profile, order])  # erasure, then a replay of the old events
        await wait_until_caught_up(worker, s, 5)
    async with state_store(s) as store:
        rec = await store.read_customer(store.customer_key("C9"))
        assert rec.snapshot is not None and rec.snapshot.customer_id == "" and rec.snapshot.erased_at
        keys = [k async for k in store.client.scan_iter(match=f"{s.redis.prefix}:*")]
        # only the tombstone hash and the offsets remain; no index, no histogram count
        kinds = sorted(k.decode().split(":")[-2] if b":c:" in k else k.decode().split(":")[-1] for k in keys)
        hist = await store.histogram()
        assert sum(hist.values()) == 0, hist
        assert not [k for k in keys if b":p:" in k or b":e:" in k], kinds
        raw = b"".join([await store.client.hget(k, "s") or b"" for k in keys if b":c:" in k])
        assert b"C9" not in raw and b"Jane" not in raw


async def test_churn_alert_once_per_crossing(settings: SettingsFactory) -> None:
    # threshold 0: every scored customer is "above"; an alert fires on the first crossing only
    s = settings(stream={"churn_alert_threshold": 0.0})
    events: list[CustomerEvent] = []
    for c in range(3):
        for i in range(5):
            events.append(Usage(event_id=f"a{c}-{i}", customer_id=f"A{c}", occurred_at=NOW - timedelta(hours=10 - i),
                                logins=1))  # fmt: skip
    await produce(s, events[:8])
    async with running_consumer(s) as worker:
        await wait_until_caught_up(worker, s, 8)
        await produce(s, events[8:])
        await wait_until_caught_up(worker, s, len(events))
        alerts = await drain_topic(s, s.kafka.alerts_topic, expected=3, timeout=10)
    decoded = [msgspec.json.decode(r.value, type=ChurnAlert) for r in alerts]  # type: ignore[attr-defined]
    assert sorted(a.customer_id for a in decoded) == ["A0", "A1", "A2"]
    assert all(a.reasons and a.model_version for a in decoded)


async def test_portfolio_counters_follow_subscriptions_exactly_once(settings: SettingsFactory) -> None:
    s = settings()
    t = NOW - timedelta(days=3)
    day = int(t.timestamp()) // DAY
    events: list[CustomerEvent] = []
    for i in range(4):
        cid = f"P{i}"
        events += [
            CustomerProfile(event_id=f"{cid}-p", customer_id=cid, occurred_at=t, acquisition_cost=100.0),
            SubscriptionChanged(event_id=f"{cid}-n", customer_id=cid, occurred_at=t, change="new", mrr_delta=50.0),
        ]
        if i < 2:  # support contacts: P0's are among the repeated events below
            events.append(TicketOpened(event_id=f"{cid}-t", customer_id=cid, occurred_at=t, ticket_id="t",
                                       channel="phone", severity="urgent"))  # fmt: skip
    events += [
        SubscriptionChanged(
            event_id="P0-u", customer_id="P0", occurred_at=t + timedelta(minutes=1), change="upgrade", mrr_delta=20.0
        ),
        SubscriptionChanged(
            event_id="P1-d", customer_id="P1", occurred_at=t + timedelta(minutes=1), change="downgrade", mrr_delta=-10.0
        ),
        SubscriptionChanged(
            event_id="P2-c", customer_id="P2", occurred_at=t + timedelta(minutes=1), change="cancel", mrr_delta=-50.0
        ),
        ErasureRequested(event_id="P3-x", customer_id="P3", occurred_at=t + timedelta(hours=1)),
    ]
    await produce(s, events + events[:5])  # the repeats are producer retries: counted once
    async with running_consumer(s) as worker:
        await wait_until_caught_up(worker, s, len(events) + 5)
        counters = await worker.store.portfolio()
    assert counters.totals["customers"] == 3  # P3 erased
    assert counters.totals["active_subscriptions"] == 2  # P2 cancelled
    assert counters.totals["mrr"] == 70 + 40
    assert counters.totals["cac_sum"] == 300
    d = counters.daily[day]
    assert (d["new_customers"], d["new_subscriptions"], d["new_mrr"]) == (4, 4, 200)
    assert (d["expansion_mrr"], d["contraction_mrr"], d["cancellations"], d["churned_mrr"]) == (20, 10, 1, 50)
    assert sum(counters.churn_hist.values()) == 3
    assert sum(counters.clv_hist.values()) == 3
    # the service cost per CLV bin sums to what the live customers' scores say, P0's contact counted once
    async with state_store(s) as store:
        records = await store.read_customers([store.customer_key(f"P{i}") for i in range(3)])
    costs = [r.scores.support_cost for r in records if r.scores is not None]
    assert costs[0] == costs[1] > 0 and costs[2] == 0
    assert abs(sum(counters.service_cost.values()) - sum(costs)) < 1e-6


async def test_health_reports_lag_and_detects_a_stuck_consumer(settings: SettingsFactory) -> None:
    import asyncio

    import httpx

    from router.devstack.infra import free_port
    from router.ingest.consumer import consumer_stack

    port = free_port()
    s = settings(stream={"health_port": port, "stuck_after_s": 1.5})
    await produce(s, _history("H1", 30, random.Random(3)))
    async with consumer_stack(s) as worker, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        stop = asyncio.Event()
        loop_task = asyncio.create_task(worker.run(stop))
        await wait_until_caught_up(worker, s, 31)
        ready = await http.get("/health/ready")
        assert ready.status_code == 200 and "lag 0" in ready.text
        assert (await http.get("/health/live")).status_code == 200
        text = (await http.get("/metrics")).text
        assert "router_consumer_last_poll_timestamp_seconds" in text and "router_consumer_lag_records" in text
        stop.set()  # the poll loop ends while the process lives on: exactly what a hung consumer looks like
        await loop_task
        await asyncio.sleep(2.0)
        stuck = await http.get("/health/ready")
        assert stuck.status_code == 503 and "stuck" in stuck.text


async def test_shadow_model_is_scored_beside_the_live_one_and_reported(settings: SettingsFactory) -> None:
    from router.churn.shadow import read_shadow_report
    from router.settings import ModelSettings

    live = ModelSettings().path
    s = settings(model={"shadow_path": live})
    rnd = random.Random(8)
    events = [e for i in range(20) for e in _history(f"SH{i}", 5, rnd)]
    await produce(s, events)
    async with running_consumer(s) as worker:
        await wait_until_caught_up(worker, s, len(events))
        assert worker.shadow is not None
        report = await worker.report_shadow()
    stored = await read_shadow_report(s)
    assert report is not None and stored == report
    assert stored.rows >= 20  # every scored customer, once per batch in which it changed
    # the same file in shadow must agree exactly: the comparison is computed, not assumed
    assert stored.max_abs_diff == 0.0 and stored.alert_agreement == 1.0


async def test_a_stale_cached_record_loses_the_compare_and_set_and_is_read_again(settings: SettingsFactory) -> None:
    """A zombie with a warm cache must not overwrite what the partition's new owner wrote."""
    s = settings()
    rnd = random.Random(5)
    events = _history("Z1", 8, rnd)
    await produce(s, events)
    records = sorted(await drain_topic(s, s.kafka.events_topic, len(events)), key=lambda r: r.offset)  # type: ignore[attr-defined]
    tp = TopicPartition(s.kafka.events_topic, records[0].partition)  # type: ignore[attr-defined]
    other = msgspec.structs.replace(s, kafka=msgspec.structs.replace(s.kafka, group_id=s.kafka.group_id + "-b"))
    async with consumer_stack(s) as zombie, consumer_stack(other) as owner:
        for worker in (zombie, owner):  # a rebalance clears the cache: let the joins happen first
            for _ in range(100):
                if worker.assigned:
                    break
                await asyncio.sleep(0.1)
        await zombie.process_batch({tp: records[:4]})
        assert len(zombie.cache) == 1
        await owner.process_batch({tp: records[4:7]})  # the new owner reads Redis, not the zombie's memory
        conflicts = _sample("router_consumer_duplicates_total", kind="cas_conflict")
        await zombie.process_batch({tp: records[7:]})  # stale cache: expected offsets no longer stored
        assert _sample("router_consumer_duplicates_total", kind="cas_conflict") == conflicts + 1
        async with state_store(s) as store:
            snap = await read_snapshot(store, "Z1")
    assert snap == fold_all(events, lateness_s=s.stream.lateness_s, hasher=hasher_of(s))


def _sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return value or 0.0


async def test_long_snapshots_are_stored_compressed_and_read_back_whole(settings: SettingsFactory) -> None:
    s = settings()
    heavy: list[CustomerEvent] = []
    for d in range(95):  # the worst usual case: activity every day of the 90-day window
        t = NOW - timedelta(days=95 - d)
        heavy += [
            Usage(event_id=f"h{d}u", customer_id="HEAVY", occurred_at=t, logins=7, features_used=4),
            OrderPlaced(event_id=f"h{d}o", customer_id="HEAVY", occurred_at=t, order_id=f"o{d}", amount=120.5),
            TicketResolved(event_id=f"h{d}t", customer_id="HEAVY", occurred_at=t, ticket_id=f"t{d}", sentiment=0.3,
                           csat=4),
        ]  # fmt: skip
    light = [Usage(event_id="l1", customer_id="LIGHT", occurred_at=NOW - timedelta(hours=1), logins=2)]
    await produce(s, heavy + light)
    async with running_consumer(s) as worker:
        await wait_until_caught_up(worker, s, len(heavy) + len(light))
    hasher = hasher_of(s)
    async with state_store(s) as store:
        expected = {cid: fold_all(evs, lateness_s=s.stream.lateness_s, hasher=hasher)
                    for cid, evs in (("HEAVY", heavy), ("LIGHT", light))}  # fmt: skip
        for cid, snap in expected.items():
            assert snap is not None and await read_snapshot(store, cid) == snap
            # old, uncompressed records stay readable: the format needs no flag
            assert decode_snapshot(msgspec.msgpack.encode(snap)) == snap == decode_snapshot(encode_snapshot(snap))
        heavy_key = store.keys.customer(store.customer_key("HEAVY"))
        raw_heavy = await store.client.hget(heavy_key, "s")
        raw_light = await store.client.hget(store.keys.customer(store.customer_key("LIGHT")), "s")
        assert raw_heavy[:1] == b"x" and raw_light[:1] != b"x"  # zlib stream vs msgpack array
        assert len(raw_heavy) < len(msgspec.msgpack.encode(expected["HEAVY"])) / 2
        assert int(await store.client.memory_usage(heavy_key)) < 2048  # the bound, even for this customer


async def test_stored_scores_name_the_model_and_when_they_stop_being_exact(settings: SettingsFactory) -> None:
    """What the request path needs to reuse a score: the model's id and an interval where it is exact."""
    s = settings()
    rnd = random.Random(4)
    events = [e for c in range(12) for e in _history(f"R{c}", 15, rnd)]
    await produce(s, events)
    async with running_consumer(s) as worker:
        await wait_until_caught_up(worker, s, len(events))
    model = ChurnModel.load(s.model.path)
    reusable = 0
    async with state_store(s) as store:
        for c in range(12):
            rec = await store.read_customer(store.customer_key(f"R{c}"))
            assert rec.snapshot is not None and rec.scores is not None
            sc = rec.scores
            assert sc.model_id == model.model_id != "" and sc.scored_at <= sc.as_of <= sc.valid_until
            for t in {sc.as_of, sc.valid_until - 1, (sc.as_of + sc.valid_until) // 2}:
                if sc.as_of <= t < sc.valid_until:
                    assert model.predict_one(features(rec.snapshot, t)) == sc.churn
            reusable += sc.valid_until > sc.as_of
    assert reusable >= 10


async def test_an_outcome_for_an_unknown_customer_creates_nothing(settings: SettingsFactory) -> None:
    """Outcome events reach the topic from the API and from other producers; one about a customer
    the state does not know must not create it (a phantom in the portfolio and the CLV histogram)."""
    s = settings()
    known = _history("OK1", 3, random.Random(1))
    ghosts = [
        Outcome(event_id=f"ghost-{i}", customer_id=f"GHOST{i}", occurred_at=NOW - timedelta(hours=1), outcome="renewed")
        for i in range(5)
    ]
    await produce(s, [*known, *ghosts])
    async with running_consumer(s) as worker:
        await wait_until_caught_up(worker, s, len(known) + len(ghosts))
        counters = await worker.store.portfolio()
        keys = [k async for k in worker.store.client.scan_iter(match=f"{s.redis.prefix}:*:c:*")]
    assert len(keys) == 1, f"{len(keys) - 1} customers created by outcome events alone"
    assert counters.totals["customers"] == 1 and sum(counters.clv_hist.values()) == 1
