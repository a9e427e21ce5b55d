"""Lifetime purchase features: the customer-base literature's x, t_x, T and the gaps between orders."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.core.features import (
    CLOCK_FEATURES,
    FEATURE_NAMES,
    clock_origins,
    clock_origins_many,
    features,
    windows_change_at,
    windows_change_at_many,
)
from router.core.identity import IdentityHasher
from router.core.reducer import DAY, Snapshot, fold_all
from schemas.events import CustomerEvent, OrderPlaced, Usage

HASHER = IdentityHasher(b"test-key-0123456789abcdef")
T0 = datetime(2026, 1, 1, 12, tzinfo=UTC)
F = {n: i for i, n in enumerate(FEATURE_NAMES)}


def _order(day: float, amount: float = 10.0, i: int | None = None) -> OrderPlaced:
    n = i if i is not None else int(day * 10)
    return OrderPlaced(
        event_id=f"o{n}", customer_id="C1", occurred_at=T0 + timedelta(days=day), order_id=f"o{n}", amount=amount
    )


def _row(events: list[CustomerEvent], as_of_day: float) -> dict[str, float]:
    snap = fold_all(events, lateness_s=400 * DAY, hasher=HASHER)
    assert snap is not None
    row = features(snap, int((T0 + timedelta(days=as_of_day)).timestamp()))
    return dict(zip(FEATURE_NAMES, row, strict=True))


def test_lifetime_features_of_a_repeat_buyer() -> None:
    row = _row([_order(0, 20.0), _order(10, 30.0), _order(40, 50.0)], 100)
    assert row["orders_total"] == 3 and row["spend_total"] == 100.0
    assert row["order_age_days"] == 100 and row["days_since_last_order"] == 60
    assert row["order_recency_days"] == 40
    assert row["mean_order_gap_days"] == 20 and row["last_order_gap_days"] == 30
    assert row["expected_activity_ratio"] == pytest.approx(3.0)  # silent for three usual gaps


def test_a_dormant_customer_keeps_its_lifetime_features_after_the_windows_forget_it() -> None:
    # 400 days on, the 30/90-day windows are empty; the lifetime facts remain and recency keeps growing.
    row = _row([_order(0), _order(30)], 430)
    assert row["orders_90d"] == 0 and row["revenue_90d"] == 0
    assert row["orders_total"] == 2 and row["days_since_last_order"] == 400 and row["order_age_days"] == 430
    assert row["expected_activity_ratio"] == pytest.approx(400 / 30)


def test_one_order_or_none_leaves_the_gaps_at_zero() -> None:
    one = _row([_order(5)], 20)
    assert (one["orders_total"], one["days_since_last_order"], one["order_age_days"], one["order_recency_days"]) == (
        1,
        15,
        15,
        0,
    )
    assert one["mean_order_gap_days"] == one["last_order_gap_days"] == one["expected_activity_ratio"] == 0
    usage_only = _row([Usage(event_id="u1", customer_id="C1", occurred_at=T0, logins=3)], 20)
    assert all(usage_only[n] == 0 for n in FEATURE_NAMES[F["orders_total"] :])


def test_the_clock_features_move_as_their_origins_say() -> None:
    snap = fold_all([_order(0), _order(10), _order(25)], lateness_s=400 * DAY, hasher=HASHER)
    assert snap is not None
    names = [FEATURE_NAMES[f] for f in CLOCK_FEATURES]
    assert names == [
        "tenure_days",
        "days_since_last_interaction",
        "days_since_last_order",
        "order_age_days",
        "expected_activity_ratio",
    ]
    as_of = int((T0 + timedelta(days=60)).timestamp())
    row = features(snap, as_of)
    for f, (origin, rate) in zip(CLOCK_FEATURES, clock_origins(snap), strict=True):
        assert origin is not None
        assert row[f] == pytest.approx((as_of - origin) / DAY * rate)
    # everything else stays put between events (no window edges this far after the last order)
    later = features(snap, as_of + 3 * DAY)
    assert [v for i, v in enumerate(row) if i not in CLOCK_FEATURES] == [
        v for i, v in enumerate(later) if i not in CLOCK_FEATURES
    ]


@given(
    st.lists(
        st.tuples(st.dictionaries(st.integers(19_000, 21_000), st.just([1]), max_size=40), st.integers(0, 400 * DAY)),
        max_size=30,
    )
)
def test_the_batched_window_bound_is_the_per_customer_one(cases: list[tuple[dict[int, list[int]], int]]) -> None:
    """The consumer's per-batch bound (:func:`windows_change_at_many`) equals :func:`windows_change_at`
    per snapshot: buckets ahead of, inside and beyond the 30- and 90-day windows, or none."""
    snaps = [Snapshot(customer_id="c", days=days) for days, _ in cases]
    as_of = [19_000 * DAY + offset for _, offset in cases]
    batched = windows_change_at_many(snaps, as_of).tolist()
    assert batched == [windows_change_at(s, t) for s, t in zip(snaps, as_of, strict=True)]


_times = st.one_of(st.just(0), st.integers(1_500_000_000, 1_900_000_000))


@given(
    st.lists(
        st.builds(
            lambda signup, first_seen, interaction, orders, a, b: Snapshot(
                customer_id="c",
                signup_day=signup,
                first_seen=first_seen,
                last_interaction_at=interaction,
                orders_total=orders,
                first_order_at=min(a, b) if orders else 0,
                last_order_at=max(a, b) if orders else 0,
            ),
            st.one_of(st.none(), st.just(0), st.integers(17_000, 22_000)),
            _times,
            _times,
            st.integers(0, 40),
            _times,
            _times,
        ),
        max_size=20,
    )
)
def test_the_batched_clock_origins_are_the_per_customer_ones(snaps: list[Snapshot]) -> None:
    origins, rates = clock_origins_many(snaps)
    for i, snap in enumerate(snaps):
        one = clock_origins(snap)
        assert [None if o == 0 else o for o in origins[i].tolist()] == [o for o, _ in one]
        assert [r for r, (o, _) in zip(rates[i].tolist(), one, strict=True) if o is not None] == [
            r for o, r in one if o is not None
        ]
