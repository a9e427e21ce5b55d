"""Portfolio arithmetic: what one customer's change adds to the counters, and the figures from them.

The consumer keeps the counters exactly once, in the same atomic write as the snapshot
(:func:`totals`, :func:`daily_kpis`, :func:`move_score_kpis` give the increments); the API
sums the shards and turns them into management figures (:func:`report`).

Definitions (period = the last ``days`` days by event day, today included):

* start MRR = MRR now - new MRR - expansion + contraction + churned MRR of the period
* customer churn rate = cancellations / active subscriptions at the start of the period
* revenue churn rate = churned MRR / start MRR (losing the three largest customers is not
  losing the three smallest)
* net revenue retention = (start MRR + expansion - contraction - churned MRR) / start MRR
* net expansion = expansion - contraction (upsells net of downgrades)
* CLV:CAC = sum of current CLVs / sum of acquisition costs (health line 3:1)
* tiers: the policy's cut-offs applied to the CLV percentiles of the population histogram
* service cost per tier: the support cost per year CLV counts, summed per CLV histogram bin
  and assigned to tiers with the bins (a customer's cost moves with its CLV bin)
* churn-risk trend: one point per day, sampled when the report is computed
* churn alerts: alerts raised per day (by the consumer's clock), counted with the snapshot
  write that raised them, so a redelivered batch does not count them twice
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import msgspec

from router.core.reducer import DAY, Snapshot
from router.core.scoring import clv_bin
from schemas.api import ChurnBand, DayCount, PortfolioReport, Tier, TierCount, TierServiceCost, TrendPoint
from schemas.events import CustomerEvent, SubscriptionChanged

__all__ = [
    "KPI_TOTALS",
    "NO_TOTALS",
    "TOTAL_NAMES",
    "PortfolioCounters",
    "ScorePoint",
    "alert_kpis",
    "churn_bin",
    "churn_summary",
    "daily_kpis",
    "move_score_kpis",
    "report",
    "totals",
]

KPI_TOTALS = ("customers", "active_subscriptions", "mrr", "cac_sum", "clv_sum")
"""Counters that hold current values (the others are per day or per churn bin)."""
TOTAL_NAMES = ("customers", "active_subscriptions", "mrr", "cac_sum")
"""The totals a snapshot contributes by itself (:func:`totals`); ``clv_sum`` follows the scores."""
NO_TOTALS = (0.0, 0.0, 0.0, 0.0)
HIGH_RISK_BIN = 14
"""Churn bins are 5 points wide: bin 14 starts at 70, the churn-alert threshold."""


class PortfolioCounters(msgspec.Struct):
    """Portfolio counters summed over all shards (maintained exactly once by the consumer)."""

    totals: dict[str, float]
    """customers, active_subscriptions, mrr, cac_sum, clv_sum (current values)."""
    daily: dict[int, dict[str, float]]
    """Epoch day -> new_customers, new_subscriptions, cancellations, churned_mrr, expansion_mrr,
    contraction_mrr, new_mrr (by event day)."""
    churn_hist: dict[int, int]
    """Churn-risk bin (0..19, 5 points each) -> customers."""
    clv_hist: dict[int, int]
    """CLV histogram bin -> customers (see :class:`router.core.scoring.ClvDistribution`)."""
    service_cost: dict[int, float] = {}
    """CLV histogram bin -> support cost per year of its customers."""


# -- increments (the consumer) ---------------------------------------------------------------


def totals(snap: Snapshot) -> tuple[float, float, float, float]:
    """The snapshot's contribution to the portfolio totals (in :data:`TOTAL_NAMES` order)."""
    active = snap.subscription == "active"
    return (1.0, 1.0 if active else 0.0, max(0, snap.mrr_cents) / 100.0 if active else 0.0, snap.acquisition_cost)


def daily_kpis(kpi: dict[str, float], event: CustomerEvent, *, created: bool) -> None:
    """Per-day portfolio counters of an applied event (by event day)."""
    sub = event if isinstance(event, SubscriptionChanged) else None
    if not created and sub is None:
        return  # most events: nothing to count
    day = int(event.occurred_at.timestamp()) // DAY
    if created:
        _add(kpi, f"d:{day}:new_customers", 1.0)
    if sub is not None:
        change = sub.change
        if change == "new":
            _add(kpi, f"d:{day}:new_subscriptions", 1.0)
            _add(kpi, f"d:{day}:new_mrr", sub.mrr_delta)
        elif change in ("upgrade", "add_on"):
            _add(kpi, f"d:{day}:expansion_mrr", sub.mrr_delta)
        elif change == "downgrade":
            _add(kpi, f"d:{day}:contraction_mrr", -sub.mrr_delta)
        elif change == "cancel":
            _add(kpi, f"d:{day}:cancellations", 1.0)
            _add(kpi, f"d:{day}:churned_mrr", -sub.mrr_delta)


def alert_kpis(kpi: dict[str, float], now: int) -> None:
    """Count a churn alert raised at epoch second ``now``."""
    _add(kpi, f"d:{now // DAY}:churn_alerts", 1.0)


def churn_bin(churn: float) -> int:
    """Churn-risk histogram bin: 20 bins of 5 points."""
    return min(19, int(churn * 20))


ScorePoint = tuple[float, float, float]
"""(churn, CLV, support cost per year) of one customer as last scored."""


def move_score_kpis(kpi: dict[str, float], old: ScorePoint | None, new: ScorePoint | None) -> None:
    """Keep the CLV sum, the churn-risk histogram and the service cost per CLV bin in step when a
    customer's (churn, CLV, support cost) goes from ``old`` to ``new`` (None: not counted)."""
    clv_delta = (new[1] if new else 0.0) - (old[1] if old else 0.0)
    if clv_delta:
        _add(kpi, "clv_sum", clv_delta)
    old_bin = churn_bin(old[0]) if old else None
    new_bin = churn_bin(new[0]) if new else None
    if old_bin != new_bin:
        if old_bin is not None:
            _add(kpi, f"cb:{old_bin}", -1.0)
        if new_bin is not None:
            _add(kpi, f"cb:{new_bin}", 1.0)
    if old is not None and old[2]:
        _add(kpi, f"sc:{clv_bin(old[1])}", -old[2])
    if new is not None and new[2]:
        _add(kpi, f"sc:{clv_bin(new[1])}", new[2])


def _add(kpi: dict[str, float], field: str, delta: float) -> None:
    kpi[field] = kpi.get(field, 0.0) + delta


# -- figures (the API) -------------------------------------------------------------------------


def churn_summary(churn_hist: dict[int, int]) -> tuple[float, float]:
    """(mean churn risk in points, share of customers at or above 70 points)."""
    total = sum(churn_hist.values())
    if not total:
        return 0.0, 0.0
    mean = sum((b * 5 + 2.5) * c for b, c in churn_hist.items()) / total
    high = sum(c for b, c in churn_hist.items() if b >= HIGH_RISK_BIN) / total
    return mean, high


def _ratio(a: float, b: float) -> float:
    return round(a / b, 4) if b > 0 else 0.0


def report(
    c: PortfolioCounters,
    days: int,
    today: int,
    tier_for: Callable[[float], Tier],
    tiers: Sequence[Tier],
    trend: dict[int, tuple[float, float]],
) -> PortfolioReport:
    """The figures from the counters (see the module docstring); ``tiers`` in the policy's order."""
    window: dict[str, float] = {}
    alerts: dict[int, int] = {}
    for day, counters in c.daily.items():
        if today - days < day <= today:
            for name, value in counters.items():
                window[name] = window.get(name, 0.0) + value
            if counters.get("churn_alerts"):
                alerts[day] = round(counters["churn_alerts"])
    w = window.get
    mrr = c.totals.get("mrr", 0.0)
    new_mrr, expansion, contraction, churned = (
        w("new_mrr", 0.0),
        w("expansion_mrr", 0.0),
        w("contraction_mrr", 0.0),
        w("churned_mrr", 0.0),
    )
    start_mrr = mrr - new_mrr - expansion + contraction + churned
    active = c.totals.get("active_subscriptions", 0.0)
    cancellations = w("cancellations", 0.0)
    active_start = active - w("new_subscriptions", 0.0) + cancellations
    cac, clv_sum = c.totals.get("cac_sum", 0.0), c.totals.get("clv_sum", 0.0)

    # Tier distribution: every histogram bin gets the percentile of its customers (ties count half).
    tier_counts = dict.fromkeys(tiers, 0)
    tier_costs = dict.fromkeys(tiers, 0.0)
    total = sum(n for n in c.clv_hist.values() if n > 0)
    below = 0
    for b, n in sorted((b, n) for b, n in c.clv_hist.items() if n > 0):
        tier = tier_for(100.0 * (below + n / 2.0) / total)
        tier_counts[tier] += n
        tier_costs[tier] += c.service_cost.get(b, 0.0)
        below += n
    churn_total = sum(c.churn_hist.values())
    return PortfolioReport(
        days=days,
        customers=round(c.totals.get("customers", 0.0)),
        active_subscriptions=round(active),
        mrr=round(mrr, 2),
        arr=round(mrr * 12, 2),
        new_customers=round(w("new_customers", 0.0)),
        new_mrr=round(new_mrr, 2),
        expansion_mrr=round(expansion, 2),
        contraction_mrr=round(contraction, 2),
        net_expansion_mrr=round(expansion - contraction, 2),
        churned_mrr=round(churned, 2),
        cancellations=round(cancellations),
        customer_churn_rate=_ratio(cancellations, active_start),
        revenue_churn_rate=_ratio(churned, start_mrr),
        net_revenue_retention=_ratio(start_mrr + expansion - contraction - churned, start_mrr),
        cac_total=round(cac, 2),
        clv_total=round(clv_sum, 2),
        clv_to_cac=round(clv_sum / cac, 2) if cac > 0 else None,
        tiers=[TierCount(tier=t, customers=n, share=_ratio(n, total)) for t, n in tier_counts.items()],
        churn_risk=[ChurnBand(band=f"{b * 5}-{b * 5 + 5}", customers=c.churn_hist.get(b, 0)) for b in range(20)]
        if churn_total
        else [],
        churn_alerts=round(w("churn_alerts", 0.0)),
        churn_alerts_by_day=[DayCount(day=_iso(d), count=n) for d, n in sorted(alerts.items()) if n],
        churn_trend=[
            TrendPoint(
                day=_iso(d),
                mean_churn_risk=round(m, 1),
                high_risk_share=round(h, 4),
            )
            for d, (m, h) in sorted(trend.items())
            if today - days < d <= today
        ],
        service_cost_per_year=round(sum(tier_costs.values()), 2),
        service_cost=[
            TierServiceCost(
                tier=t,
                customers=tier_counts[t],
                cost_per_year=round(tier_costs[t], 2),
                cost_per_customer=round(tier_costs[t] / tier_counts[t], 2) if tier_counts[t] else 0.0,
            )
            for t in tiers
        ],
    )


def _iso(day: int) -> str:
    return datetime.fromtimestamp(day * DAY, UTC).date().isoformat()
