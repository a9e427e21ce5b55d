"""Scores: CLV arithmetic and percentiles from the sharded histogram (within one point)."""

from __future__ import annotations

import bisect
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.core.reducer import Snapshot
from router.core.scoring import NO_SERVICE_COST, ClvDistribution, clv_bin, clv_parts, expected_months, support_cost
from router.settings import ModelSettings, PolicySettings


def _exact_percentile(sorted_values: list[float], v: float) -> float:
    lo = bisect.bisect_left(sorted_values, v)
    hi = bisect.bisect_right(sorted_values, v)
    return 100.0 * (lo + (hi - lo) / 2) / len(sorted_values)


def test_percentile_within_one_point_on_a_skewed_population() -> None:
    rnd = random.Random(3)
    # log-normal values, a long tail of big customers, some negative CLV (CAC not earned back)
    values = [rnd.lognormvariate(7, 1.6) - rnd.choice([0, 0, 0, 500]) for _ in range(50_000)]
    hist: dict[int, int] = {}
    for v in values:
        hist[clv_bin(v)] = hist.get(clv_bin(v), 0) + 1
    dist = ClvDistribution(hist)
    ordered = sorted(values)
    worst = max(abs(dist.percentile(v) - _exact_percentile(ordered, v)) for v in values[:5000])  # type: ignore[operator]
    assert worst < 1.0, worst


def test_empty_population_has_no_percentile() -> None:
    assert ClvDistribution({}).percentile(100.0) is None


@given(st.floats(0, 0.999), st.floats(0, 0.999))
def test_expected_lifetime_falls_as_churn_rises(a: float, b: float) -> None:
    s = ModelSettings()
    lo, hi = sorted((a, b))
    assert expected_months(hi, s) <= expected_months(lo, s) + 1e-9
    assert 0 <= expected_months(hi, s) <= s.max_lifetime_months


def test_bins_are_monotone() -> None:
    xs = sorted(random.Random(1).uniform(-1e6, 1e6) for _ in range(10_000))
    bins = [clv_bin(x) for x in xs]
    assert bins == sorted(bins)


def _ticketed(channel: str, severity: str, n: int, timed_minutes: list[float]) -> Snapshot:
    from datetime import UTC, datetime, timedelta

    from router.core.identity import IdentityHasher
    from router.core.reducer import fold_all
    from schemas.events import CustomerEvent, TicketOpened, TicketResolved

    at = datetime(2026, 3, 1, tzinfo=UTC)
    events: list[CustomerEvent] = [
        TicketOpened(event_id=f"o{i}", customer_id="C", occurred_at=at + timedelta(hours=i), ticket_id=f"t{i}",
                     channel=channel, severity=severity)  # type: ignore[arg-type]
        for i in range(n)
    ]  # fmt: skip
    events += [
        TicketResolved(event_id=f"r{i}", customer_id="C", occurred_at=at + timedelta(hours=i, minutes=30),
                       ticket_id=f"t{i}", handling_minutes=m)
        for i, m in enumerate(timed_minutes)
    ]  # fmt: skip
    snap = fold_all(events, lateness_s=86_400, hasher=IdentityHasher(b"k" * 16))
    assert snap is not None
    return snap


def test_support_cost_prices_contacts_by_channel_and_severity_and_timed_tickets_by_the_hour() -> None:
    from router.policy import load_policy

    prices = load_policy(PolicySettings().path).service_prices
    assert support_cost(_ticketed("phone", "urgent", 4, []), prices) == pytest.approx(4 * 9.0 * 2.5)
    assert support_cost(_ticketed("chat", "low", 10, []), prices) == pytest.approx(10 * 5.0 * 0.7)
    # Two of four email tickets reported 30 and 90 minutes: they cost two hours, the other two their price.
    timed = _ticketed("email", "normal", 4, [30.0, 90.0])
    assert (timed.contacts, timed.timed_tickets, timed.handling_s) == ([0, 4], 2, 7200)
    assert support_cost(timed, prices) == pytest.approx(2 * 6.0 + 2 * 42.0)
    assert support_cost(timed, NO_SERVICE_COST) == 0.0


def test_clv_subtracts_the_support_cost_over_the_expected_lifetime() -> None:
    from router.core.features import features

    s = ModelSettings()
    snap = _ticketed("phone", "high", 6, [])
    snap.customer_id, snap.subscription, snap.mrr_cents = "C", "active", 10_000
    row = features(snap, snap.last_event_at + 86_400 * 60)
    prices = NO_SERVICE_COST._replace(per_contact=tuple(10.0 for _ in NO_SERVICE_COST.per_contact))
    free, costly = clv_parts(snap, row, 0.2, s, NO_SERVICE_COST), clv_parts(snap, row, 0.2, s, prices)
    assert costly.support_cost_per_month == pytest.approx(60.0 / max(1.0, row[0] / 30.0))
    assert free.value - costly.value == pytest.approx(costly.support_cost_per_month * costly.expected_months)
    assert costly.support_cost_per_year == pytest.approx(12 * costly.support_cost_per_month)
