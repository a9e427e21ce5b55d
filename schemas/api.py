"""Wire contracts of the HTTP API (request and response bodies)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from schemas.events import AwareDatetime, Sentiment, Severity

__all__ = [
    "Action",
    "ClassifyRequest",
    "CustomerRef",
    "Decision",
    "Escalation",
    "ScoreCard",
    "SlaDeadline",
    "Tier",
]

Tier = Literal["VIP", "Premium", "Standard", "Basic"]
Channel = Literal["ticket", "email", "phone", "chat", "web", "social"]
Category = Literal["technical", "billing", "account", "cancellation", "sales", "general"]


class CustomerRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How the caller knows the customer: exactly one of id, e-mail or phone."""

    customer_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    email: Annotated[str, msgspec.Meta(min_length=3, max_length=254)] | None = None
    phone: Annotated[str, msgspec.Meta(min_length=3, max_length=32)] | None = None

    def __post_init__(self) -> None:
        given = sum(v is not None for v in (self.customer_id, self.email, self.phone))
        if given != 1:
            raise ValueError("give exactly one of customer_id, email or phone")


class ClassifyRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An incoming ticket, call or chat to be routed."""

    customer: CustomerRef
    channel: Channel = "ticket"
    category: Category = "general"
    priority: Severity = "normal"
    text_sentiment: Sentiment | None = None
    """Sentiment of the contact's own text, if the caller analysed it (-1..1)."""
    received_at: AwareDatetime | None = None
    """When the contact arrived; the SLA clock starts here (default: now)."""


class SlaDeadline(msgspec.Struct, frozen=True):
    due_at: AwareDatetime
    """First-response deadline (UTC)."""
    target_hours: float
    """The tier's first-response target."""
    clock: Literal["business_hours", "calendar"]
    """Whether the target counts business hours of ``calendar`` or calendar hours."""
    calendar: str
    """Name of the business-hours calendar (time zone, weekly hours, holidays) used."""


class Escalation(msgspec.Struct, frozen=True):
    queue: str
    """Queue the contact goes to."""
    role: str
    """Role that takes it (e.g. senior_advisor, senior_technician, agent, bot)."""
    skill: str | None = None


class Action(msgspec.Struct, frozen=True):
    code: str
    """Stable machine code, e.g. ``retention_offer``."""
    label: str
    """What the agent should do, in plain words."""


class ScoreCard(msgspec.Struct, frozen=True):
    """Scores shown to the agent. Tiers are internal: never show them to the customer."""

    clv_score: float | None
    """CLV percentile in the current population, 0-100."""
    churn_risk: float | None
    """Probability of churn within the model horizon, 0-100."""
    upsell: float | None
    """Upsell potential, 0-100."""
    advocacy: float | None
    """Willingness to recommend, 0-100."""
    sentiment: Literal["positive", "neutral", "negative", "unknown"]
    last_interaction: str | None
    last_interaction_at: AwareDatetime | None


class Decision(msgspec.Struct, frozen=True):
    """How to treat the contact, and why."""

    decision_id: str
    customer_known: bool
    tier: Tier
    sla: SlaDeadline
    escalation: Escalation
    next_best_actions: list[Action]
    scores: ScoreCard
    reasons: list[str]
    """Up to three facts that drove the decision, in words an agent understands."""
    model_version: str
    policy_version: str
    degraded: bool = False
    degraded_cause: str | None = None
    """Why a fallback was used (e.g. ``redis_unavailable``, ``model_unavailable``)."""
    human_review: bool = False
    """True when the customer did not consent to automated decisions (GDPR art. 22)."""
