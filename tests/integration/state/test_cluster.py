"""The same code on a 3-master Redis Cluster: consumer state, portfolio counters and decisions."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from router.core.reducer import fold_all
from router.state.audit import AdminRecord, AuditWriter
from router.state.records import SWEEP_MARK
from router.state.store import StateStore, connect
from tests.conftest import SettingsFactory
from tests.integration.ingest.test_consumer import _history
from tests.integration.state.test_index import zombie_loses_and_writes_no_index
from tests.support.helpers import hasher_of, produce, running_consumer, wait_until_caught_up
from tests.support.redis_cluster import redis_cluster


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    with redis_cluster(3) as url:
        yield url


async def test_consumer_and_lookups_on_redis_cluster(settings: SettingsFactory, cluster_url: str) -> None:
    s = settings(redis={"url": cluster_url, "cluster": True})
    rnd = random.Random(5)
    per_customer = {f"Q{i:03d}": _history(f"Q{i:03d}", 15, rnd) for i in range(60)}
    stream = sorted((e for evs in per_customer.values() for e in evs), key=lambda e: e.occurred_at)
    await produce(s, stream + stream[:50])  # with producer retries
    async with running_consumer(s) as worker:
        await wait_until_caught_up(worker, s, len(stream) + 50)
    client = connect(s.redis.url, cluster=True)
    try:
        store = StateStore(client, s.redis.prefix, hasher_of(s))
        ids = sorted(per_customer)
        records = await store.read_customers([store.customer_key(c) for c in ids])
        hasher = hasher_of(s)
        for cid, rec in zip(ids, records, strict=True):
            assert rec.snapshot == fold_all(per_customer[cid], lateness_s=s.stream.lateness_s, hasher=hasher), cid
        # keys really are spread over the masters (hash tags, no single hot key)
        nodes = {client.get_node_from_key(store.keys.customer(store.customer_key(c))).name for c in ids}
        assert len(nodes) == 3
        counters = await store.portfolio()
        assert counters.totals["customers"] == len(ids)
        assert sum(counters.clv_hist.values()) == len(ids)
        # the phone index resolves on the cluster too
        phone_key = store.keys.phone(hasher.phone_key("+49 30 5550100") or "")
        assert await store.resolve_index(phone_key) in per_customer
        # audit: every record in the global stream, a customer stream only for a known customer
        audit = AuditWriter(store, linger_s=0)
        await audit.start()
        for who in ("Q000", "Q001", "nobody-known"):
            audit.record(AdminRecord(action="override_set", at=0.0, actor="test", customer_key=store.customer_key(who)))
        await audit.flush(5.0)
        await audit.stop()
        assert await client.xlen(store.keys.audit()) == 3
        for who, expected in (("Q000", 1), ("Q001", 1), ("nobody-known", 0)):
            key = store.keys.customer_audit(store.customer_key(who))
            assert await client.exists(key) == expected, who
            assert expected == 0 or await client.ttl(key) > 0, who
    finally:
        await client.aclose()


async def test_a_zombie_writer_leaves_the_index_alone_on_redis_cluster(
    settings: SettingsFactory, cluster_url: str
) -> None:
    """On a cluster the index keys live in other slots than the snapshot: they are written only
    after a successful compare-and-set, so a zombie that loses it writes none either."""
    s = settings(redis={"url": cluster_url, "cluster": True})
    client = connect(s.redis.url, cluster=True)
    try:
        await zombie_loses_and_writes_no_index(s, StateStore(client, s.redis.prefix, hasher_of(s)))
    finally:
        await client.aclose()


async def test_the_sweep_rescores_due_customers_on_redis_cluster(settings: SettingsFactory, cluster_url: str) -> None:
    from tests.integration.ingest.test_sweep import LAST_SEEN, TODAY, _active_until

    s = settings(redis={"url": cluster_url, "cluster": True}, kafka={"partitions": 2}, stream={"sweep_interval_s": 0})
    ids = [f"W{i:03d}" for i in range(40)]
    events = [e for cid in ids for e in _active_until(cid, LAST_SEEN, days=3)]
    await produce(s, events)
    now = [LAST_SEEN.timestamp() + 3600]
    async with running_consumer(s, clock=lambda: now[0]) as worker:
        await wait_until_caught_up(worker, s, len(events))
        now[0] = TODAY
        report = await worker.sweeper.sweep()
        again = await worker.sweeper.sweep()  # nothing is due twice
        store = worker.store
        records = await store.read_customers([store.customer_key(c) for c in ids])
        counters = await store.portfolio()
    assert report.rescored == len(ids) and report.conflicts == 0 and again.rescored == 0
    assert all(r.marks[SWEEP_MARK] == 1 and r.scores is not None and r.scores.scored_at == int(TODAY) for r in records)
    assert sum(counters.churn_hist.values()) == len(ids) == sum(counters.clv_hist.values())
