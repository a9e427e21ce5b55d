"""Portfolio arithmetic: the increments a customer's change adds, and the figures from the counters."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from router.core.kpi import PortfolioCounters, churn_summary, daily_kpis, move_score_kpis, report
from router.core.reducer import DAY
from router.core.scoring import clv_bin
from router.policy.spec import TIERS
from schemas.events import SubscriptionChanged

TODAY = 20_000


def _tier(pct: float) -> str:
    return "VIP" if pct >= 90 else "Premium" if pct >= 70 else "Standard" if pct >= 10 else "Basic"


def test_revenue_churn_and_nrr_follow_their_definitions() -> None:
    counters = PortfolioCounters(
        totals={"customers": 4, "active_subscriptions": 3, "mrr": 900.0, "cac_sum": 400.0, "clv_sum": 2_000.0},
        daily={TODAY - 1: {"new_mrr": 100.0, "expansion_mrr": 50.0, "contraction_mrr": 20.0, "churned_mrr": 230.0,
                           "cancellations": 1, "new_subscriptions": 1},
               TODAY - 40: {"churned_mrr": 999.0}},  # outside a 30-day window
        churn_hist={1: 3, 15: 1},
        clv_hist={10: 1, 20: 1, 30: 1, 40: 1},
    )  # fmt: skip
    r = report(counters, 30, TODAY, _tier, TIERS, {})
    start = 900.0 - 100.0 - 50.0 + 20.0 + 230.0  # 1,000
    assert r.revenue_churn_rate == pytest.approx(230.0 / start, abs=1e-4)
    assert r.net_revenue_retention == pytest.approx((start + 50.0 - 20.0 - 230.0) / start, abs=1e-4)
    assert r.customer_churn_rate == pytest.approx(1 / (3 - 1 + 1), abs=1e-4)
    assert r.net_expansion_mrr == 30.0 and r.arr == 10_800.0 and r.clv_to_cac == 5.0
    assert {t.tier: t.customers for t in r.tiers} == {
        "VIP": 0,
        "Premium": 1,
        "Standard": 3,
        "Basic": 0,
    }  # percentiles 12.5, 37.5, 62.5, 87.5
    assert churn_summary(counters.churn_hist) == (pytest.approx((7.5 * 3 + 77.5) / 4), 0.25)


def test_a_cancellation_is_counted_on_its_event_day() -> None:
    at = datetime.fromtimestamp(TODAY * DAY + 3600, UTC)
    kpi: dict[str, float] = {}
    daily_kpis(
        kpi,
        SubscriptionChanged(event_id="s", customer_id="c", occurred_at=at, change="cancel", mrr_delta=-40.0),
        created=False,
    )
    assert kpi == {f"d:{TODAY}:cancellations": 1.0, f"d:{TODAY}:churned_mrr": 40.0}


def test_score_moves_keep_the_histogram_balanced() -> None:
    kpi: dict[str, float] = {}
    move_score_kpis(kpi, None, (0.12, 100.0, 240.0))
    assert kpi[f"sc:{clv_bin(100.0)}"] == 240.0
    move_score_kpis(kpi, (0.12, 100.0, 240.0), (0.74, 60.0, 310.0))
    assert kpi[f"sc:{clv_bin(60.0)}"] == 310.0 and kpi[f"sc:{clv_bin(100.0)}"] == 0.0  # the cost moved with the bin
    move_score_kpis(kpi, (0.74, 60.0, 310.0), None)
    assert all(v == 0 for v in kpi.values())


def test_service_cost_per_tier_follows_the_tiers_of_the_clv_bins() -> None:
    # Four customers, one per CLV bin; the two in the top half cost 100 and 300 a year, the others 900 each.
    counters = PortfolioCounters(
        totals={"customers": 4}, daily={}, churn_hist={1: 4}, clv_hist={10: 1, 20: 1, 30: 1, 40: 1},
        service_cost={10: 900.0, 20: 900.0, 30: 300.0, 40: 100.0},
    )  # fmt: skip
    r = report(counters, 30, TODAY, _tier, TIERS, {})
    by_tier = {t.tier: (t.customers, t.cost_per_year, t.cost_per_customer) for t in r.service_cost}
    # percentiles 12.5, 37.5, 62.5 (Standard) and 87.5 (Premium)
    assert by_tier == {"VIP": (0, 0.0, 0.0), "Premium": (1, 100.0, 100.0), "Standard": (3, 2100.0, 700.0),
                       "Basic": (0, 0.0, 0.0)}  # fmt: skip
    assert r.service_cost_per_year == 2200.0
