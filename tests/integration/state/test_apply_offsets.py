"""The apply script stores a batch's partition offsets itself, on a real Redis, only with a write
whose compare-and-sets all held: offsets ahead of the state they cover would skip events on a
restart (the consumer seeks to them)."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
from aiokafka.structs import ConsumerRecord

from router.ingest.planning import BatchPlanner, Pending
from router.state.records import CustomerRecord
from schemas.events import CustomerProfile
from tests.conftest import SettingsFactory
from tests.support.helpers import state_store

NOW = datetime.now(UTC).replace(microsecond=0)
_enc = msgspec.json.Encoder()
NOBODY = CustomerRecord(None, {}, None, None)


def _pending(cid: str, offset: int) -> Pending:
    event = CustomerProfile(event_id=f"{cid}-{offset}", customer_id=cid, occurred_at=NOW)
    raw = _enc.encode(event)
    record: ConsumerRecord[bytes, bytes] = ConsumerRecord(
        topic="events", partition=0, offset=offset, timestamp=0, timestamp_type=0, key=cid.encode(),
        value=raw, checksum=None, serialized_key_size=len(cid), serialized_value_size=len(raw), headers=(),
    )  # fmt: skip
    return Pending(record, event)


async def test_offsets_are_stored_with_a_write_only_if_every_compare_and_set_held(settings: SettingsFactory) -> None:
    s = settings()
    async with state_store(s) as store:
        planner = BatchPlanner(s.stream, s.model, store.hasher, store.keys, None)
        offsets_key = store.keys.offsets("g", "events")
        a, b = store.customer_key("A1"), store.customer_key("B1")
        now = int(NOW.timestamp())

        first = planner.plan({"A1": [_pending("A1", 0)]}, [a], [NOBODY], now)
        assert store.fits_one_call(first.ops)
        assert await store.apply(first.ops, (offsets_key, {0: 1})) == [True]
        assert await store.stored_offsets("g", "events") == {0: 1}

        # A writer that read A1 before that write (a zombie) loses A1's compare-and-set; B1's part
        # is written, but the offsets, which cover A1's event too, are not.
        stale = planner.plan({"A1": [_pending("A1", 1)], "B1": [_pending("B1", 2)]}, [a, b], [NOBODY, NOBODY], now)
        assert await store.apply(stale.ops, (offsets_key, {0: 3})) == [False, True]
        assert await store.stored_offsets("g", "events") == {0: 1}

        # Without offsets the script writes none (the consumer stores them after its lanes).
        again = planner.plan({"A1": [_pending("A1", 4)]}, [a], [await store.read_customer(a)], now)
        assert await store.apply(again.ops) == [True]
        assert await store.stored_offsets("g", "events") == {0: 1}


async def test_pipelines_of_scripts_survive_a_redis_that_forgot_them(settings: SettingsFactory) -> None:
    """Pipelines send plain EVALSHA (no SCRIPT EXISTS first): a Redis without the scripts (restarted,
    flushed) answers NOSCRIPT once, and the store loads them and runs the pipeline again."""
    s = settings()
    async with state_store(s) as store:
        planner = BatchPlanner(s.stream, s.model, store.hasher, store.keys, None)
        a = store.customer_key("F1")
        await store.client.script_flush()
        plan = planner.plan({"F1": [_pending("F1", 0)]}, [a], [NOBODY], int(NOW.timestamp()))
        assert await store.apply(plan.ops, (store.keys.offsets("g", "events"), {0: 1})) == [True]
        await store.client.script_flush()
        records, stored = await store.read_customers_and_offsets([a], "g", "events", [0, 1])
        assert records[0].snapshot is not None and records[0].snapshot.customer_id == "F1"
        assert stored == {0: 1, 1: None}
