"""Batch planning without Kafka or Redis: what a batch does to each customer it touches."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import numpy as np
import pytest
from aiokafka.structs import ConsumerRecord, TopicPartition

from router.churn.model import ChurnModel
from router.core.identity import IdentityHasher
from router.core.reducer import DAY
from router.ingest.planning import EVENTS_PER_LANE, BatchPlanner, Pending
from router.settings import Settings
from router.state.keys import Keys
from router.state.records import SWEEP_MARK, CustomerRecord, Scores, encode_marks
from schemas.events import (
    CustomerProfile,
    ErasureRequested,
    OrderPlaced,
    Outcome,
    SubscriptionChanged,
    TicketOpened,
    Usage,
)

HASHER = IdentityHasher(b"test-key-0123456789abcdef")
KEYS = Keys("t")
NOW = datetime.now(UTC).replace(microsecond=0)
_enc = msgspec.json.Encoder()


class FixedModel:
    """A churn model that answers ``p`` for every row: planning's alert logic, with no ONNX in the way."""

    version = "fixed"
    model_id = "fixed-id"

    def __init__(self, p: float) -> None:
        self.p = p

    def predict(self, rows: Any) -> Any:
        return np.full(len(rows), self.p, dtype=np.float32)

    def stable_until(self, snap: Any, row: Any, as_of: int) -> int:
        return as_of + 60

    def stable_until_many(self, snaps: Any, rows: Any, as_of: Any) -> list[int]:
        return [self.stable_until(s, r, t) for s, r, t in zip(snaps, rows, as_of, strict=True)]

    def explain(self, row: Any, top: int = 3) -> list[Any]:
        return []


def _record(
    event: Any, partition: int = 0, offset: int = 0, value: bytes | None = None
) -> ConsumerRecord[bytes, bytes]:
    raw = _enc.encode(event) if value is None else value
    return ConsumerRecord(
        topic="events", partition=partition, offset=offset, timestamp=0, timestamp_type=0,
        key=b"k", value=raw, checksum=None, serialized_key_size=1, serialized_value_size=len(raw), headers=(),
    )  # fmt: skip


def _planner(model: Any = None, **stream: Any) -> BatchPlanner:
    s = Settings()
    return BatchPlanner(msgspec.structs.replace(s.stream, **stream), s.model, HASHER, KEYS, model)


def _plan(planner: BatchPlanner, events: list[Any], record: CustomerRecord | None = None, first_offset: int = 0) -> Any:
    by: dict[str, list[Pending]] = {}
    for i, e in enumerate(events):
        by.setdefault(e.customer_id, []).append(Pending(_record(e, offset=first_offset + i), e))
    keys = [HASHER.customer_key(cid) for cid in by]
    records = [record or CustomerRecord(None, {}, None, None) for _ in by]
    return planner.plan(by, keys, records, int(time.time()))


def _profile(cid: str = "C1", at: datetime = NOW, **kw: Any) -> CustomerProfile:
    return CustomerProfile(event_id=f"p-{cid}-{at.timestamp()}", customer_id=cid, occurred_at=at, **kw)


def test_triage_dead_letters_poison_and_splits_customers_into_disjoint_lanes() -> None:
    planner = _planner(lanes=2)
    n = 2 * EVENTS_PER_LANE  # a big enough batch for two lanes
    good = [_profile(f"C{i % 20}", at=NOW - timedelta(seconds=i)) for i in range(n)]
    future = _profile("C99", at=NOW + timedelta(days=2))
    records = [_record(e, offset=i) for i, e in enumerate(good)]
    records += [
        _record(None, offset=n, value=b"{not json"),
        _record(None, offset=n + 1, value=b'{"type": "order_placed", "customer_id": "C1"}'),
        _record(future, offset=n + 2),
    ]
    triage = planner.triage({TopicPartition("events", 0): records}, time.time())
    assert sorted(d.reason for d in triage.dead) == ["from_future", "schema_invalid", "undecodable"]
    assert triage.next_offsets == {0: n + 3}
    lanes = [set(lane) for lane in triage.lanes]
    assert len(lanes) == 2 and not lanes[0] & lanes[1] and lanes[0] | lanes[1] == {f"C{i}" for i in range(20)}
    # a small batch (low load) is one lane: fewer round trips, and the freshest state
    assert len(planner.triage({TopicPartition("events", 0): records[:20]}, time.time()).lanes) == 1
    headers = dict(triage.dead[0].headers())
    assert (
        headers["dlq.origin.offset"] in {str(n + k).encode() for k in range(3)}
        and "'" not in headers["dlq.error.message"].decode()
    )


def test_a_new_customer_is_indexed_counted_and_scored() -> None:
    events = [
        _profile(phones=["+49 30 1234567"], emails=["Anna@Example.com"], acquisition_cost=100.0),
        SubscriptionChanged(event_id="s1", customer_id="C1", occurred_at=NOW, change="new", mrr_delta=50.0),
    ]
    plan = _plan(_planner(model=FixedModel(0.2)), events)
    (op,) = plan.ops
    assert op.marks == {0: 1} and op.expected_marks is None
    assert {k for k, _ in op.index_add} == {
        KEYS.phone(HASHER.digest("phone", "+49301234567")),
        KEYS.email(HASHER.digest("email", "anna@example.com")),
    }
    day = int(NOW.timestamp()) // DAY
    assert op.kpi["customers"] == 1.0 and op.kpi["mrr"] == 50.0 and op.kpi["cac_sum"] == 100.0
    assert op.kpi[f"d:{day}:new_customers"] == 1.0 and op.kpi[f"d:{day}:new_mrr"] == 50.0
    assert op.kpi["cb:4"] == 1.0 and op.kpi["clv_sum"] == pytest.approx(op.scores.clv)
    assert op.scores.churn == pytest.approx(0.2) and op.scores.model_id == "fixed-id"
    assert op.scores.valid_until > op.scores.as_of and plan.alerts == []


def test_redelivered_offsets_change_nothing() -> None:
    planner = _planner()
    events = [_profile(), Usage(event_id="u1", customer_id="C1", occurred_at=NOW, logins=3)]
    (first,) = _plan(planner, events).ops
    stored = CustomerRecord(first.snapshot, first.marks, first.scores, encode_marks(first.marks))
    assert _plan(planner, events, stored).ops == []  # the same offsets again
    (again,) = _plan(planner, events, stored, first_offset=2).ops  # a producer retry: new offsets, same ids
    assert again.snapshot == first.snapshot and again.kpi == {}


def test_an_alert_fires_once_per_upward_crossing() -> None:
    crossed = _plan(_planner(model=FixedModel(0.9)), [_profile()])
    assert len(crossed.alerts) == 1 and crossed.ops[0].scores.alerted
    op = crossed.ops[0]
    stored = CustomerRecord(op.snapshot, op.marks, op.scores, encode_marks(op.marks))
    order = OrderPlaced(event_id="o1", customer_id="C1", occurred_at=NOW, order_id="o1", amount=10.0)
    still = _plan(_planner(model=FixedModel(0.68)), [order], stored, first_offset=1)  # above the re-arm line
    assert still.alerts == [] and still.ops[0].scores.alerted


def test_erasure_leaves_a_tombstone_removes_the_index_and_the_counters() -> None:
    planner = _planner(model=FixedModel(0.3))
    (op,) = _plan(planner, [_profile(phones=["+49 30 1234567"], acquisition_cost=10.0)]).ops
    stored = CustomerRecord(op.snapshot, op.marks, op.scores, encode_marks(op.marks))
    erase = ErasureRequested(event_id="e1", customer_id="C1", occurred_at=NOW)
    (gone,) = _plan(planner, [erase], stored, first_offset=1).ops
    assert gone.snapshot.customer_id == "" and gone.scores == Scores(scored_at=gone.scores.scored_at)
    assert gone.index_remove == [(KEYS.phone(HASHER.digest("phone", "+49301234567")), "C1")]
    assert gone.kpi["customers"] == -1.0 and gone.kpi["cac_sum"] == -10.0 and gone.kpi["cb:6"] == -1.0
    assert gone.kpi["clv_sum"] == pytest.approx(-op.scores.clv)


def test_the_real_model_scores_what_the_request_path_would() -> None:
    model = ChurnModel.load(Settings().model.path)
    (op,) = _plan(_planner(model=model), [_profile(), Usage(event_id="u", customer_id="C1", occurred_at=NOW)]).ops
    from router.core.features import features

    row = features(op.snapshot, op.scores.as_of)
    assert op.scores.churn == model.predict_one(row)


def test_outcomes_of_an_unknown_customer_write_nothing_and_are_counted_as_ignored() -> None:
    from prometheus_client import REGISTRY

    labels = {"type": "outcome", "result": "ignored"}
    before = REGISTRY.get_sample_value("router_consumer_events_total", labels) or 0.0
    ghost = [Outcome(event_id=f"f{i}", customer_id="GHOST", occurred_at=NOW, outcome="churned") for i in range(2)]
    assert _plan(_planner(), ghost).ops == []
    assert REGISTRY.get_sample_value("router_consumer_events_total", labels) == before + 2


def _stored(op: Any) -> CustomerRecord:
    return CustomerRecord(op.snapshot, op.marks, op.scores, encode_marks(op.marks))


def test_a_write_records_when_the_sweep_must_rescore_the_customer() -> None:
    planner = _planner(model=FixedModel(0.2), sweep_max_age_s=3_600)
    (op,) = _plan(planner, [_profile()]).ops
    assert op.partition == 0
    assert op.due_at == op.scores.valid_until == op.scores.as_of + 60  # FixedModel: exact for a minute
    stored = _stored(op)
    erase = ErasureRequested(event_id="e1", customer_id="C1", occurred_at=NOW)
    (gone,) = _plan(planner, [erase], stored, first_offset=1).ops
    assert gone.due_at is None  # a tombstone leaves the due index


def test_rescore_moves_scores_counters_and_alerts_once_with_a_stable_id() -> None:
    (op,) = _plan(_planner(model=FixedModel(0.3)), [_profile(acquisition_cost=10.0)]).ops
    stored = _stored(op)
    h = HASHER.customer_key("C1")
    later = int(time.time()) + 30 * DAY
    risky = _planner(model=FixedModel(0.9))
    plan = risky.rescore([h], [stored], 0, later)
    (again,) = plan.ops
    assert again.expected_marks == stored.raw_marks and again.marks == {0: 0, SWEEP_MARK: 1}
    assert again.snapshot is stored.snapshot and again.scores.churn == pytest.approx(0.9) and again.scores.alerted
    assert again.kpi["cb:6"] == -1.0 and again.kpi["cb:17"] == 1.0  # 30 -> 90 points (0.9 in float32: bin 85-90)
    assert again.due_at == later + 60 and again.scores.scored_at == later
    assert len(plan.alerts) == 1 and plan.alerts[0].churn_risk == 90.0
    # A sweep redone from the same stored record (a crash before its write landed) raises the same alert id.
    assert risky.rescore([h], [stored], 0, later).alerts[0].alert_id == plan.alerts[0].alert_id
    # Once written, rescoring again does not alert again (still above the threshold).
    assert risky.rescore([h], [_stored(again)], 0, later + 60).alerts == []


def test_rescore_takes_customers_without_a_live_snapshot_out_of_the_index() -> None:
    planner = _planner(model=FixedModel(0.3))
    (op,) = _plan(planner, [_profile()]).ops
    erase = ErasureRequested(event_id="e1", customer_id="C1", occurred_at=NOW)
    (gone,) = _plan(planner, [erase], _stored(op), first_offset=1).ops
    plan = planner.rescore(
        ["h-gone", "h-none"], [_stored(gone), CustomerRecord(None, {}, None, None)], 3, int(NOW.timestamp())
    )
    assert [o.due_at for o in plan.ops] == [None, None] and [o.partition for o in plan.ops] == [3, 3]
    assert plan.alerts == [] and all(o.kpi == {} for o in plan.ops)


def test_support_cost_enters_clv_scores_and_the_service_cost_counters() -> None:
    from router.policy import load_policy

    prices = load_policy(Settings().policy.path).service_prices
    planner = _planner(model=FixedModel(0.2))
    free = _planner(model=FixedModel(0.2))
    planner.prices = prices
    tickets = [
        _profile(signup_date=(NOW - timedelta(days=300)).date()),
        *(
            TicketOpened(event_id=f"t{i}", customer_id="C1", occurred_at=NOW, ticket_id=f"t{i}", channel="phone",
                         severity="urgent")
            for i in range(4)
        ),
    ]  # fmt: skip
    (costly,) = _plan(planner, tickets).ops
    (plain,) = _plan(free, tickets).ops
    assert plain.scores.support_cost == 0.0
    per_year = 4 * 9.0 * 2.5 / 10.0 * 12  # four urgent phone tickets over ten months of tenure
    assert costly.scores.support_cost == pytest.approx(per_year, rel=0.01)  # tenure counts from the signup day
    assert costly.scores.clv < plain.scores.clv
    assert costly.kpi[f"sc:{costly.scores.clv_bin}"] == costly.scores.support_cost


def test_rescore_leaves_a_customer_whose_events_now_come_from_another_partition_to_its_owner() -> None:
    planner = _planner(model=FixedModel(0.3))
    (op,) = _plan(planner, [_profile()]).ops  # events from partition 0
    assert op.scores.partition == 0
    h = HASHER.customer_key("C1")
    (moved,) = planner.rescore([h], [_stored(op)], 4, int(NOW.timestamp())).ops  # a stale entry in partition 4
    assert moved.due_at is None and moved.kpi == {} and moved.partition == 4
    (own,) = planner.rescore([h], [_stored(op)], 0, int(NOW.timestamp())).ops
    assert own.due_at is not None and own.scores.partition == 0
