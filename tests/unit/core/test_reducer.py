"""The reducer: order-free, duplicate-free folding (property-based) and what each event does."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.core.features import FEATURE_NAMES, features
from router.core.identity import IdentityHasher
from router.core.reducer import DAY, Applied, Snapshot, fold, fold_all, plan_of
from schemas.events import (
    CustomerEvent,
    CustomerProfile,
    ErasureRequested,
    NpsResponse,
    OrderPlaced,
    Outcome,
    Payment,
    SubscriptionChanged,
    TicketOpened,
    TicketResolved,
    Usage,
)

HASHER = IdentityHasher(b"test-key-0123456789abcdef")
LATE = DAY  # lateness bound used throughout
T0 = datetime(2026, 1, 1, tzinfo=UTC)
F = {n: i for i, n in enumerate(FEATURE_NAMES)}


def _event(kind: int, i: int, t: datetime, x: int) -> CustomerEvent:
    common = {"event_id": f"e{i}", "customer_id": "C1", "occurred_at": t}
    match kind:
        case 0:
            return OrderPlaced(order_id=f"o{i}", amount=float(x), **common)
        case 1:
            return Payment(invoice_id=f"i{i}", amount=10.0, status="late", days_late=x % 30 + 1, **common)
        case 2:
            return SubscriptionChanged(change="upgrade", plan=f"plan{x % 3}", mrr_delta=float(x % 50), **common)
        case 3:
            return SubscriptionChanged(change="downgrade", plan=f"plan{x % 3}", mrr_delta=-float(x % 20), **common)
        case 4:
            return TicketOpened(ticket_id=f"t{i}", severity=("low", "high")[x % 2], **common)
        case 5:
            return TicketResolved(ticket_id=f"t{i}", sentiment=(x % 21 - 10) / 10, csat=x % 5 + 1, **common)
        case 6:
            return Usage(logins=x % 40, features_used=x % 7, **common)
        case 7:
            return NpsResponse(score=x % 11, **common)
        case _:
            return CustomerProfile(segment="smb", plan=f"p{x % 4}", phones=[f"+49 30 {1000000 + x}"], **common)


@st.composite
def histories(draw: st.DrawFn, with_erasure: bool = False) -> tuple[list[CustomerEvent], list[CustomerEvent]]:
    """(time-ordered unique events, an at-least-once delivery of them within the lateness bound)."""
    n = draw(st.integers(1, 60))
    offsets = sorted(draw(st.lists(st.integers(0, 200 * DAY), min_size=n, max_size=n)))
    kinds = draw(st.lists(st.integers(0, 8), min_size=n, max_size=n))
    xs = draw(st.lists(st.integers(0, 10_000), min_size=n, max_size=n))
    events = [
        _event(k, i, T0 + timedelta(seconds=o), x) for i, (k, o, x) in enumerate(zip(kinds, offsets, xs, strict=True))
    ]
    if with_erasure and draw(st.booleans()):
        at = draw(st.integers(0, 200 * DAY))
        events.append(ErasureRequested(event_id="erase", customer_id="C1", occurred_at=T0 + timedelta(seconds=at)))
        events.sort(key=lambda e: e.occurred_at)
    rnd = random.Random(draw(st.integers(0, 2**32)))
    # Each delivery is delayed by at most the lateness bound; duplicates likewise.
    deliveries = [(e.occurred_at.timestamp() + rnd.uniform(0, LATE), e) for e in events]
    deliveries += [(e.occurred_at.timestamp() + rnd.uniform(0, LATE), e) for e in events if rnd.random() < 0.3]
    deliveries.sort(key=lambda d: d[0])
    return events, [e for _, e in deliveries]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(with_erasure=True))
def test_fold_is_independent_of_duplicates_and_bounded_reordering(
    h: tuple[list[CustomerEvent], list[CustomerEvent]],
) -> None:
    in_order, delivered = h
    reference = fold_all(in_order, lateness_s=LATE, hasher=HASHER)
    snap: Snapshot | None = None
    for e in delivered:
        snap, result = fold(snap, e, lateness_s=LATE, hasher=HASHER)
        assert result is not Applied.TOO_LATE
    assert snap == reference
    assert reference is not None
    as_of = int(in_order[-1].occurred_at.timestamp()) + DAY
    assert features(snap, as_of) == features(reference, as_of)


def test_duplicate_event_id_is_applied_once() -> None:
    e = OrderPlaced(event_id="x", customer_id="C1", occurred_at=T0, order_id="o", amount=100.0)
    snap, r1 = fold(None, e, lateness_s=LATE, hasher=HASHER)
    snap, r2 = fold(snap, e, lateness_s=LATE, hasher=HASHER)
    assert (r1, r2) == (Applied.APPLIED, Applied.DUPLICATE)
    assert snap.orders_total == 1 and snap.revenue_cents == 10_000


def test_event_beyond_lateness_bound_is_reported_not_applied() -> None:
    new = Usage(event_id="a", customer_id="C1", occurred_at=T0 + timedelta(days=3), logins=5)
    old = OrderPlaced(event_id="b", customer_id="C1", occurred_at=T0, order_id="o", amount=5.0)
    snap, _ = fold(None, new, lateness_s=LATE, hasher=HASHER)
    snap, result = fold(snap, old, lateness_s=LATE, hasher=HASHER)
    assert result is Applied.TOO_LATE
    assert snap.orders_total == 0


def test_erasure_wipes_and_older_events_do_not_resurrect() -> None:
    profile = CustomerProfile(
        event_id="p", customer_id="C1", occurred_at=T0, phones=["+49 30 1234567"], emails=["a@example.com"]
    )
    snap, _ = fold(None, profile, lateness_s=LATE, hasher=HASHER)
    assert snap.phone_keys and snap.email_keys
    erase = ErasureRequested(event_id="x", customer_id="C1", occurred_at=T0 + timedelta(hours=1))
    snap, _ = fold(snap, erase, lateness_s=LATE, hasher=HASHER)
    assert snap.customer_id == "" and snap.phone_keys == [] and snap.erased_at
    # a replay of the old profile (new offset, same or new event id) must not bring the customer back
    replay = CustomerProfile(event_id="p2", customer_id="C1", occurred_at=T0, phones=["+49 30 1234567"])
    snap, result = fold(snap, replay, lateness_s=LATE, hasher=HASHER)
    assert result is Applied.ERASED and snap.customer_id == ""
    # a customer who comes back much later starts afresh
    later = OrderPlaced(event_id="o", customer_id="C1", occurred_at=T0 + timedelta(days=30), order_id="o", amount=1.0)
    snap, result = fold(snap, later, lateness_s=LATE, hasher=HASHER)
    assert result is Applied.APPLIED and snap.customer_id == "C1" and snap.orders_total == 1


def test_windows_follow_event_time() -> None:
    events = [
        Usage(event_id=f"u{d}", customer_id="C1", occurred_at=T0 + timedelta(days=d), logins=10)
        for d in range(0, 90, 1)
    ]
    snap = fold_all(events, lateness_s=LATE, hasher=HASHER)
    assert snap is not None
    as_of = int((T0 + timedelta(days=89, hours=12)).timestamp())
    row = features(snap, as_of)
    assert row[F["logins_30d"]] == 300
    assert row[F["logins_prev_30d_avg"]] == 300  # 60 days x 10 / 2
    # 40 days later the window has moved on
    assert features(snap, as_of + 40 * DAY)[F["logins_30d"]] == 0


def test_latest_plan_wins_by_event_time_whatever_the_order() -> None:
    a = SubscriptionChanged(event_id="a", customer_id="C1", occurred_at=T0, change="new", plan="basic", mrr_delta=10)
    b = SubscriptionChanged(
        event_id="b", customer_id="C1", occurred_at=T0 + timedelta(hours=2), change="upgrade", plan="pro", mrr_delta=40
    )
    for order in ([a, b], [b, a]):
        snap = fold_all(order, lateness_s=LATE, hasher=HASHER)
        assert snap is not None and plan_of(snap) == "pro" and snap.mrr_cents == 5000


def test_an_outcome_alone_creates_no_customer() -> None:
    """Feedback on a decision must not invent a customer (or bring back an erased one)."""
    outcome = Outcome(event_id="f1", customer_id="GHOST", occurred_at=T0, outcome="churned", decision_id="d-1")
    snap, result = fold(None, outcome, lateness_s=LATE, hasher=HASHER)
    assert snap.customer_id == "" and snap.outcome is None, "an outcome alone created a customer"
    assert result is Applied.IGNORED
    known, _ = fold(
        None, Usage(event_id="u", customer_id="C1", occurred_at=T0, logins=1), lateness_s=LATE, hasher=HASHER
    )
    later = Outcome(event_id="f2", customer_id="C1", occurred_at=T0 + timedelta(hours=1), outcome="renewed")
    known, result = fold(known, later, lateness_s=LATE, hasher=HASHER)
    assert result is Applied.APPLIED and known.outcome == "renewed"
    erased, _ = fold(known, ErasureRequested(event_id="x", customer_id="C1", occurred_at=T0 + timedelta(hours=2)),
                     lateness_s=LATE, hasher=HASHER)  # fmt: skip
    after = Outcome(event_id="f3", customer_id="C1", occurred_at=T0 + timedelta(days=3), outcome="churned")
    erased, result = fold(erased, after, lateness_s=LATE, hasher=HASHER)
    assert result is Applied.IGNORED and erased.customer_id == ""


def test_contact_counts_cover_every_channel_and_severity_the_contract_allows() -> None:
    from typing import get_args, get_type_hints

    from router.core.reducer import CONTACT_CHANNELS, CONTACT_SEVERITIES, contact_index
    from schemas.events import TicketOpened

    hints = get_type_hints(TicketOpened, include_extras=True)
    assert set(get_args(hints["channel"])) == set(CONTACT_CHANNELS)
    assert set(get_args(hints["severity"])) == set(CONTACT_SEVERITIES)
    positions = {contact_index(c, s) for c in CONTACT_CHANNELS for s in CONTACT_SEVERITIES}
    assert positions == set(range(len(CONTACT_CHANNELS) * len(CONTACT_SEVERITIES)))


def _order_at(day: float, i: int) -> OrderPlaced:
    return OrderPlaced(
        event_id=f"o{i}", customer_id="C1", occurred_at=T0 + timedelta(days=day), order_id=f"o{i}", amount=10.0
    )


def test_order_times_are_the_same_whatever_the_arrival_order_and_duplicates() -> None:
    orders = [_order_at(0, 1), _order_at(7, 2), _order_at(7, 3), _order_at(20, 4), _order_at(12, 5)]
    snaps = []
    for perm in itertools.permutations(orders):
        snap = None
        for e in [*perm, perm[0]]:  # and a redelivery
            snap, _ = fold(snap, e, lateness_s=400 * DAY, hasher=HASHER)
        assert snap is not None
        snaps.append((snap.first_order_at, snap.prev_order_at, snap.last_order_at, snap.orders_total))
    day = lambda d: int((T0 + timedelta(days=d)).timestamp())  # noqa: E731
    assert set(snaps) == {(day(0), day(12), day(20), 5)}


def test_the_order_times_cost_few_snapshot_bytes() -> None:
    snap = fold_all([_order_at(d, d) for d in range(0, 90, 3)], lateness_s=DAY, hasher=HASHER)
    assert snap is not None
    with_times = len(msgspec.msgpack.encode(snap))
    bare = msgspec.structs.replace(snap, first_order_at=0, last_order_at=0, prev_order_at=0)
    assert with_times - len(msgspec.msgpack.encode(bare)) == 3 * 4  # three uint32 timestamps instead of three zeros
