"""Portfolio figures for management, from the counters the consumer keeps exactly once.

The arithmetic and the definitions are in :mod:`router.core.kpi`; this service reads the
counters (background client: a population-wide read), samples the daily churn-risk trend
(kept two years) and applies the current policy's tier cut-offs.
"""

from __future__ import annotations

import time

from router.core.kpi import churn_summary, report
from router.core.reducer import DAY
from router.errors import REDIS_FAULTS, Unavailable
from router.policy.spec import TIERS
from router.serving.live import Live
from router.state.store import StateStore
from schemas.api import PortfolioReport

__all__ = ["PortfolioService"]

_TREND_KEEP_DAYS = 731


class PortfolioService:
    def __init__(self, store: StateStore, live: Live) -> None:
        self.store = store
        self.live = live

    async def report(self, days: int) -> PortfolioReport:
        today = int(time.time()) // DAY
        try:
            counters = await self.store.portfolio()
            trend = await self.store.churn_trend(today, churn_summary(counters.churn_hist), _TREND_KEEP_DAYS)
        except REDIS_FAULTS as exc:
            raise Unavailable(f"portfolio counters unavailable ({type(exc).__name__})") from None
        return report(counters, days, today, self.live.policy.tier_for, TIERS, trend)
