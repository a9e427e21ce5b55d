"""Portfolio figures for management, from the counters the consumer keeps exactly once.

Definitions (period = the last ``days`` days by event day, today included):

* start MRR = MRR now - new MRR - expansion + contraction + churned MRR of the period
* customer churn rate = cancellations / active subscriptions at the start of the period
* revenue churn rate = churned MRR / start MRR (losing the three largest customers is not
  losing the three smallest)
* net revenue retention = (start MRR + expansion - contraction - churned MRR) / start MRR
* net expansion = expansion - contraction (upsells net of downgrades)
* CLV:CAC = sum of current CLVs / sum of acquisition costs (health line 3:1)
* tiers: the policy's cut-offs applied to the CLV percentiles of the population histogram
* churn-risk trend: one point per day, sampled when the report is computed (kept two years)
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import msgspec

from router.core.reducer import DAY
from router.errors import REDIS_FAULTS, Unavailable
from router.policy.spec import TIERS
from router.serving.decisions import DecisionService
from router.state.store import PortfolioCounters
from schemas.api import ChurnBand, PortfolioReport, TierCount, TrendPoint

__all__ = ["PortfolioService", "report"]

_HIGH_RISK_BIN = 14
"""Churn bins are 5 points wide: bin 14 starts at 70, the churn-alert threshold."""
_TREND_KEEP_DAYS = 731
_enc = msgspec.msgpack.Encoder()
_point_dec = msgspec.msgpack.Decoder(tuple[float, float])


class PortfolioService:
    def __init__(self, decisions: DecisionService) -> None:
        self.decisions = decisions

    async def report(self, days: int) -> PortfolioReport:
        store = self.decisions.background
        today = int(time.time()) // DAY
        key = f"{store.keys.prefix}:{{pf}}:churn-trend"
        try:
            counters = await store.portfolio()
            mean, high = churn_summary(counters.churn_hist)
            pipe = store.client.pipeline(transaction=False)
            pipe.hset(key, str(today), _enc.encode((mean, high)))
            pipe.hgetall(key)
            _, raw = await pipe.execute()
        except REDIS_FAULTS as exc:
            raise Unavailable(f"portfolio counters unavailable ({type(exc).__name__})") from None
        trend: dict[int, tuple[float, float]] = {int(k): _point_dec.decode(v) for k, v in raw.items()}
        stale = [str(d) for d in trend if d <= today - _TREND_KEEP_DAYS]
        if stale:
            await store.client.hdel(key, *stale)
        return report(counters, days, today, self.decisions.policy.tier_for, trend)


def churn_summary(churn_hist: dict[int, int]) -> tuple[float, float]:
    """(mean churn risk in points, share of customers at or above 70 points)."""
    total = sum(churn_hist.values())
    if not total:
        return 0.0, 0.0
    mean = sum((b * 5 + 2.5) * c for b, c in churn_hist.items()) / total
    high = sum(c for b, c in churn_hist.items() if b >= _HIGH_RISK_BIN) / total
    return mean, high


def _ratio(a: float, b: float) -> float:
    return round(a / b, 4) if b > 0 else 0.0


def report(
    c: PortfolioCounters, days: int, today: int, tier_for: Any, trend: dict[int, tuple[float, float]]
) -> PortfolioReport:
    """The figures from the counters (pure arithmetic; see the module docstring)."""
    window: dict[str, float] = {}
    for day, counters in c.daily.items():
        if today - days < day <= today:
            for name, value in counters.items():
                window[name] = window.get(name, 0.0) + value
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
    tiers = dict.fromkeys(TIERS, 0)
    total = sum(n for n in c.clv_hist.values() if n > 0)
    below = 0
    for _, n in sorted((b, n) for b, n in c.clv_hist.items() if n > 0):
        tiers[tier_for(100.0 * (below + n / 2.0) / total)] += n
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
        tiers=[TierCount(tier=t, customers=n, share=_ratio(n, total)) for t, n in tiers.items()],
        churn_risk=[ChurnBand(band=f"{b * 5}-{b * 5 + 5}", customers=c.churn_hist.get(b, 0)) for b in range(20)]
        if churn_total
        else [],
        churn_trend=[
            TrendPoint(
                day=datetime.fromtimestamp(d * DAY, UTC).date().isoformat(),
                mean_churn_risk=round(m, 1),
                high_risk_share=round(h, 4),
            )
            for d, (m, h) in sorted(trend.items())
            if today - days < d <= today
        ],
    )
