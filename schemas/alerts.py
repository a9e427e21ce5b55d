"""Contract of the churn alerts topic (``churn-alerts``), consumed by customer success."""

from __future__ import annotations

import msgspec

from schemas.events import AwareDatetime

__all__ = ["ChurnAlert"]


class ChurnAlert(msgspec.Struct, frozen=True, tag="churn_alert", tag_field="type"):
    """Churn risk crossed the alert threshold upwards (sent once per crossing).

    ``alert_id`` is derived from the customer and the offsets that caused the crossing, so a
    redelivered alert (after a consumer crash) carries the same id: consumers de-duplicate on it.
    """

    alert_id: str
    customer_id: str
    churn_risk: float
    """0-100."""
    threshold: float
    """0-100."""
    crossed_at: AwareDatetime
    reasons: list[str]
    """Top factors behind the risk, in plain words."""
    model_version: str
