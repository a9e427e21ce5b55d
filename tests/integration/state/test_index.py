"""The phone and e-mail index on a real Redis: written under the snapshot's compare-and-set.

A zombie writer (a consumer that lost its partition in a rebalance but has not noticed yet)
folds from an old record and loses the compare-and-set; it must not write the index entry its
fold wanted either, or it re-adds a number that a newer profile gave to someone else, and the
agent's screen-pop names the wrong customer.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from aiokafka.structs import ConsumerRecord
from litestar.testing import AsyncTestClient

from router.api.app import create_app
from router.ingest.planning import BatchPlanner, Pending
from router.settings import Settings
from router.state.records import CustomerRecord
from router.state.store import StateStore
from schemas.events import CustomerEvent, CustomerProfile
from tests.conftest import SettingsFactory
from tests.support.api_support import VIP_PHONE, api_settings, auth, populate, population
from tests.support.helpers import hasher_of, state_store

NOW = datetime.now(UTC).replace(microsecond=0)
NUMBER = "+49 30 7788990"
_enc = msgspec.json.Encoder()


def _pending(event: CustomerEvent, offset: int) -> Pending:
    raw = _enc.encode(event)
    record: ConsumerRecord[bytes, bytes] = ConsumerRecord(
        topic="events", partition=0, offset=offset, timestamp=0, timestamp_type=0, key=event.customer_id.encode(),
        value=raw, checksum=None, serialized_key_size=len(event.customer_id), serialized_value_size=len(raw),
        headers=(),
    )  # fmt: skip
    return Pending(record, event)


def _profile(cid: str, minutes: int, phones: list[str]) -> CustomerProfile:
    return CustomerProfile(
        event_id=f"{cid}-p{minutes}", customer_id=cid, occurred_at=NOW - timedelta(minutes=60 - minutes), phones=phones
    )


async def zombie_loses_and_writes_no_index(s: Settings, store: StateStore) -> None:
    """The scenario, on whatever Redis ``store`` talks to (a single one or a cluster)."""
    planner = BatchPlanner(s.stream, s.model, store.hasher, store.keys, None)
    c1, c2 = store.customer_key("Z1"), store.customer_key("Z2")
    now = int(NOW.timestamp())
    setup = planner.plan(
        {"Z1": [_pending(_profile("Z1", 0, []), 0)]}, [c1], [CustomerRecord(None, {}, None, None)], now
    )
    assert await store.apply(setup.ops) == [True]

    # The zombie read Z1 before the rebalance and folds Z1's profile that lists the number...
    (old,) = await store.read_customers([c1])
    zombie = planner.plan({"Z1": [_pending(_profile("Z1", 10, [NUMBER]), 1)]}, [c1], [old], now)
    assert zombie.ops[0].index_add, "the zombie's fold wants to index the number"
    # ...while the partition's new owner folds that profile, a newer one without the number, and
    # the profile of Z2, who has the number now.
    (current,) = await store.read_customers([c1])
    owner = planner.plan(
        {
            "Z1": [_pending(_profile("Z1", 10, [NUMBER]), 1), _pending(_profile("Z1", 20, []), 2)],
            "Z2": [_pending(_profile("Z2", 30, [NUMBER]), 3)],
        },
        [c1, c2],
        [current, CustomerRecord(None, {}, None, None)],
        now,
    )
    assert await store.apply(owner.ops) == [True, True]
    assert await store.apply(zombie.ops) == [False], "the zombie's compare-and-set must fail"

    phone_key = store.keys.phone(store.hasher.phone_key(NUMBER) or "")
    holder = await store.resolve_index(phone_key)
    assert holder == "Z2", f"the number's index entry names {holder!r} after the zombie's failed write"


async def test_a_zombie_writer_that_loses_the_compare_and_set_leaves_the_index_alone(
    settings: SettingsFactory,
) -> None:
    s = settings()
    async with state_store(s) as store:
        await zombie_loses_and_writes_no_index(s, store)


async def test_screenpop_never_names_a_customer_whose_snapshot_does_not_list_the_number(
    settings: SettingsFactory,
) -> None:
    """An index entry that its snapshot does not confirm (a zombie's or a crash's leftover on a
    Redis Cluster, where index and snapshot cannot be written atomically) yields "unknown"."""
    s = api_settings(settings)
    await populate(s, population())
    hasher = hasher_of(s)
    async with state_store(s) as store:
        # the VIP's number pointing at a small customer whose profile never listed it
        await store.client.set(store.keys.phone(hasher.phone_key(VIP_PHONE) or ""), "S007")
    async with AsyncTestClient(app=create_app(s)) as client:
        r = await client.get("/v1/screenpop", params={"phone": VIP_PHONE}, headers=auth("telephony"))
        assert r.status_code == 200, r.text
        card: dict[str, Any] = r.json()
        assert card["caller"] == "unknown", f"screen-pop named a customer the number does not belong to: {card}"
        r = await client.post("/v1/classify", json={"customer": {"phone": VIP_PHONE}}, headers=auth("helpdesk"))
        assert r.json()["customer_known"] is False
