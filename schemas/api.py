"""Wire contracts of the HTTP API (request and response bodies)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import msgspec

from schemas.events import (
    AwareDatetime,
    CustomerProfile,
    Identifier,
    NpsResponse,
    OrderPlaced,
    Outcome,
    Payment,
    Sentiment,
    Severity,
    SubscriptionChanged,
    TicketOpened,
    TicketResolved,
    Usage,
)

__all__ = [
    "Action",
    "AuditEntry",
    "ChurnBand",
    "ClassifyRequest",
    "ClvBreakdown",
    "ConnectorStatus",
    "Conversation",
    "CustomerRef",
    "CustomerView",
    "DayCount",
    "Decision",
    "ErasureAccepted",
    "ErrorBody",
    "Escalation",
    "EventBatch",
    "EventProblem",
    "EventsAccepted",
    "EventsRejected",
    "ExplainedFactor",
    "FreshdeskRequester",
    "FreshdeskTicket",
    "FreshdeskWebhook",
    "HandoffDecision",
    "HandoffRequest",
    "HelpdeskRouting",
    "IngestEvent",
    "IntercomReceipt",
    "OutcomeAccepted",
    "OutcomeRequest",
    "Override",
    "OverrideRequest",
    "PortfolioReport",
    "ProducedEvent",
    "ReloadRequest",
    "ReloadResult",
    "ScoreCard",
    "ScreenPop",
    "ScreenPopRequest",
    "SlaDeadline",
    "StripeReceipt",
    "Tier",
    "TierCount",
    "TierServiceCost",
    "TrendPoint",
    "ZendeskRequester",
    "ZendeskTicket",
    "ZendeskWebhook",
]

Tier = Literal["VIP", "Premium", "Standard", "Basic"]
Channel = Literal["ticket", "email", "phone", "chat", "web", "social"]
Category = Literal["technical", "billing", "account", "cancellation", "sales", "general"]


_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
_SKEW = timedelta(days=1)


def _plausible(field: str, when: datetime | None) -> None:
    """A contact or outcome time between 2000 and one day ahead of now (clock skew).

    Checked before any time-zone arithmetic: year 1 east of UTC or 9999 would overflow later.
    """
    if when is None:
        return
    if not 2000 <= when.year <= 9000 or not _EARLIEST <= when <= datetime.now(UTC) + _SKEW:
        raise ValueError(f"{field} must lie between 2000-01-01 and one day from now")


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

    def __post_init__(self) -> None:
        _plausible("received_at", self.received_at)


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
    overridden: bool = False
    """True when a person set the tier (see ``PUT /v1/customers/{customer_id}/override``)."""
    nba_arm: Literal["action", "control"] | None = None
    """Next-best-action experiment arm of a known customer: ``control`` customers (a fixed share, ``ROUTER_MODEL_NBA_CONTROL_SHARE``) get the policy's standard action instead, so that the actions' effect on retention can be measured; null when no control group runs or the customer is unknown."""


# ---------------------------------------------------------------------------- screen-pop


class ScreenPop(msgspec.Struct, frozen=True):
    """The agent's card for an incoming call, looked up by the caller's number (never echoed)."""

    caller: Literal["known", "unknown", "withheld"]
    """``unknown``: no customer has this number; ``withheld``: no usable number was given."""
    tier: Tier
    clv_score: float | None
    churn_risk: float | None
    sentiment: Literal["positive", "neutral", "negative", "unknown"]
    last_interaction: str | None
    last_interaction_at: AwareDatetime | None
    recommendation: str
    """The first next-best-action, in plain words."""
    next_best_actions: list[Action]
    escalation: Escalation
    reasons: list[str]
    decision_id: str
    degraded: bool = False
    degraded_cause: str | None = None


class ScreenPopRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /v1/screenpop``: the caller number in the body, so it never appears in a URL or a log."""

    phone: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    """Any common notation, E.164 or a ``tel:`` URI (RFC 3966); absent or unusable: a ``withheld`` card."""


# ------------------------------------------------------------------------------- handoff


class Conversation(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """State of the bot conversation so far."""

    bot_turns: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 0
    """Messages the bot has answered."""
    failed_intents: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 0
    """Customer messages the bot did not understand."""
    sentiment: Sentiment | None = None
    """Tone of the conversation so far (-1..1), if the bot measures it."""
    asked_for_human: bool = False
    """The customer explicitly asked for a person."""
    category: Category = "general"


class HandoffRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    customer: CustomerRef
    conversation: Conversation = msgspec.field(default_factory=Conversation)


class HandoffDecision(msgspec.Struct, frozen=True):
    """Hand over to a person now, or let the bot continue; and why."""

    handover: bool
    queue: str
    """Where the conversation goes (the bot's own queue when ``handover`` is false)."""
    role: str
    reason: str
    """The rule that decided, in plain words."""
    tier: Tier
    sla: SlaDeadline
    decision_id: str
    degraded: bool = False
    degraded_cause: str | None = None


# ------------------------------------------------------------------------------ webhooks


class ZendeskRequester(msgspec.Struct, frozen=True):
    """Who asked. Blank values (Zendesk renders an empty placeholder as ``""``) count as absent; the first
    usable of external_id, email, phone names the customer, and none at all gets the default routing."""

    external_id: Annotated[str, msgspec.Meta(max_length=128)] | None = None
    """Your customer id as Zendesk knows it (preferred)."""
    email: Annotated[str, msgspec.Meta(max_length=254)] | None = None
    phone: Annotated[str, msgspec.Meta(max_length=32)] | None = None


class ZendeskTicket(msgspec.Struct, frozen=True):
    id: int | str
    """The ticket number (``{{ticket.id}}``): the write-back goes to this ticket (anything else: routed, not written back)."""
    requester: ZendeskRequester = msgspec.field(default_factory=ZendeskRequester)
    priority: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    """low, normal, high, urgent in any case, or Zendesk's display text ("Normal"); blank: normal."""
    channel: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    """Zendesk's ``via`` channel as code or display text (email, "Web Form", voice, chat, api, ...); blank: email."""
    category: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    """technical, billing, account, cancellation, sales, general in any case (or a common synonym); other: general."""


class ZendeskWebhook(msgspec.Struct, frozen=True):
    """Body of the Zendesk trigger's JSON template; fields not listed here are ignored."""

    ticket: ZendeskTicket


class FreshdeskRequester(msgspec.Struct, frozen=True):
    """The requester (``{{ticket.requester.email}}``, ...). Blank values count as absent."""

    external_id: Annotated[str, msgspec.Meta(max_length=128)] | None = None
    email: Annotated[str, msgspec.Meta(max_length=254)] | None = None
    phone: Annotated[str, msgspec.Meta(max_length=32)] | None = None


class FreshdeskTicket(msgspec.Struct, frozen=True):
    id: int | str
    """The ticket number (``{{ticket.id}}``): the write-back goes to this ticket (anything else: routed, not written back)."""
    requester: FreshdeskRequester = msgspec.field(default_factory=FreshdeskRequester)
    priority: int | Annotated[str, msgspec.Meta(max_length=32)] | None = None
    """Low, Medium, High, Urgent (any case) or 1-4; blank: medium."""
    source: int | Annotated[str, msgspec.Meta(max_length=64)] | None = None
    """Email, Portal, Phone, Chat, ... or Freshdesk's source number."""
    category: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    """A category (technical, billing, ...) if a ticket field carries one; other or blank: general."""


class FreshdeskWebhook(msgspec.Struct, frozen=True):
    """Body of the Freshdesk automation's webhook (advanced JSON content); fields not listed are ignored."""

    ticket: FreshdeskTicket


class HelpdeskRouting(msgspec.Struct, frozen=True):
    """Fields a helpdesk trigger can apply to the ticket as they are."""

    group: str
    """Group (queue) to assign."""
    priority: Severity
    tags: list[str]
    """``router_tier_vip``, ``router_role_senior_advisor``, ``router_action_retention_offer``, ..."""
    due_at: AwareDatetime
    decision_id: str
    degraded: bool = False


class IntercomReceipt(msgspec.Struct, frozen=True):
    """Answer to an Intercom notification: the routing of a new conversation or ticket, or why none."""

    topic: str
    routed: bool
    routing: HelpdeskRouting | None = None
    ignored: str | None = None
    """Why nothing was routed (a topic that opens no contact, Intercom's ``ping``)."""


class ProducedEvent(msgspec.Struct, frozen=True):
    event_id: str
    type: str


class StripeReceipt(msgspec.Struct, frozen=True):
    """Answer to a Stripe event: the contract events produced (acknowledged by Kafka), or why none."""

    stripe_event_id: str
    type: str
    produced: list[ProducedEvent]
    ignored: str | None = None


# ---------------------------------------------------------------------------- event ingest

IngestEvent = (
    CustomerProfile
    | OrderPlaced
    | Payment
    | SubscriptionChanged
    | TicketOpened
    | TicketResolved
    | Usage
    | NpsResponse
    | Outcome
)
"""Every event of the contract but ``erasure_requested`` (an admin action: ``POST /v1/customers/{id}/erasure``)."""


class EventBatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /v1/events``: events of the contract, produced to the events topic keyed by customer, in order."""

    events: Annotated[list[IngestEvent], msgspec.Meta(min_length=1)]


class EventsAccepted(msgspec.Struct, frozen=True):
    """Every event of the batch was acknowledged by Kafka (acks from all in-sync replicas)."""

    accepted: int
    events: list[ProducedEvent]
    """In the order sent."""


class EventProblem(msgspec.Struct, frozen=True):
    index: int
    """Position of the event in ``events`` (from 0)."""
    problem: str
    """What is wrong with it, naming the field (never its value)."""


class EventsRejected(msgspec.Struct, frozen=True):
    """A batch with invalid events: none of it was produced; fix or drop the items listed and send it again."""

    status_code: int
    error: str
    detail: str
    items: list[EventProblem] = []


class ConnectorStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One connected helpdesk: its write-back outbox and how the last attempts went."""

    name: str
    """``rt``, ``zendesk`` or ``freshdesk``."""
    state: Literal["ok", "failing", "idle"]
    """``failing``: the newest attempt failed (see ``last_failure``) or, for a followed helpdesk, the newest poll did."""
    queued: int
    """Write-backs waiting or being written."""
    in_flight: int
    """Of those, the ones a ``router connect`` process is writing now."""
    delayed: int
    """Write-backs waiting for their next attempt after a failure."""
    dead_letters: int
    """Write-backs given up on (``router connect --requeue-dead`` puts them back)."""
    last_landed_at: AwareDatetime | None = None
    last_failure_at: AwareDatetime | None = None
    last_failure: str | None = None
    """What failed last: the request (method, path template) and the helpdesk's status or the transport error."""
    last_poll_at: AwareDatetime | None = None
    """Followed helpdesks (RT): the last successful search for new tickets."""
    poll_failure: str | None = None
    watermark: str | None = None
    """Followed helpdesks: the highest ticket number routed."""


# -------------------------------------------------------------------- customer and admin


class ExplainedFactor(msgspec.Struct, frozen=True):
    """One reason behind the churn risk, measured on the live model."""

    feature: str
    direction: Literal["raises", "lowers"]
    effect_pp: float
    """Points (0-100) the risk moves if this feature were at the population's typical value."""
    phrase: str


class ClvBreakdown(msgspec.Struct, frozen=True):
    """How the customer lifetime value is computed, with its inputs."""

    clv: float
    clv_score: float | None
    """Percentile of ``clv`` in the current population."""
    monthly_margin: float
    subscription_margin: float
    order_margin_per_month: float
    expected_months: float
    """Discounted expected remaining lifetime, from the churn risk."""
    acquisition_cost: float
    mrr: float
    churn_used: float
    formula: str
    support_cost_per_month: float = 0.0
    """Cost to serve: the customer's support contacts so far, priced by the policy, per month of tenure."""
    support_cost_per_year: float = 0.0
    """``support_cost_per_month`` x 12, in ``currency``."""
    support_contacts: int = 0
    """Tickets the support cost counts."""
    currency: str = "EUR"
    """Currency of the policy's cost-to-serve prices."""


class Override(msgspec.Struct, frozen=True):
    """A person's tier override; it expires by itself."""

    tier: Tier
    reason: str
    by: str
    """Name of the API key that set it."""
    set_at: AwareDatetime
    expires_at: AwareDatetime


class OverrideRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    tier: Tier
    reason: Annotated[str, msgspec.Meta(min_length=3, max_length=500)]
    expires_in_hours: Annotated[float, msgspec.Meta(gt=0, le=24 * 366)] = 24.0


class AuditEntry(msgspec.Struct, frozen=True):
    kind: str
    decision_id: str | None
    at: AwareDatetime
    tier: str | None = None
    queue: str | None = None
    actions: list[str] = []
    model_version: str | None = None
    policy_version: str | None = None
    degraded_cause: str | None = None
    detail: str | None = None
    reasons: list[str] = []
    """A decision's reasons in plain words, as the caller got them."""


class CustomerView(msgspec.Struct, frozen=True):
    """Everything the service holds and derives about one customer, explained (GDPR art. 15/22)."""

    customer_known: bool
    tier: Tier | None
    scores: ScoreCard | None
    churn_factors: list[ExplainedFactor]
    clv: ClvBreakdown | None
    override: Override | None
    segment: str | None
    plan: str | None
    subscription: str | None
    automated_decision_consent: bool | None
    recent_decisions: list[AuditEntry]
    model_version: str
    policy_version: str


class OutcomeRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    customer_id: Identifier
    outcome: Literal["churned", "renewed", "upsold", "ticket_resolved"]
    occurred_at: AwareDatetime | None = None

    def __post_init__(self) -> None:
        _plausible("occurred_at", self.occurred_at)


class OutcomeAccepted(msgspec.Struct, frozen=True):
    event_id: str
    decision_id: str


class ErasureAccepted(msgspec.Struct, frozen=True):
    event_id: str
    will_remove: list[str]
    kept: list[str]


class ErrorBody(msgspec.Struct, frozen=True):
    """Every 4xx/5xx answer of the API: the status again, a stable code and a message safe to show."""

    status_code: int
    error: str
    """Stable machine-readable code, e.g. `unauthorized`, `bad_request`, `conflict`."""
    detail: str
    """What is wrong, naming the field but never its value (no secrets, no personal data)."""


class ReloadRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    path: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)] | None = None
    """File to load; default: the configured path."""


class ReloadResult(msgspec.Struct, frozen=True):
    kind: Literal["policy", "model"]
    version: str
    previous_version: str
    path: str


class TierCount(msgspec.Struct, frozen=True):
    tier: Tier
    customers: int
    share: float


class TierServiceCost(msgspec.Struct, frozen=True):
    """What serving a tier's customers costs per year (support contacts priced by the policy)."""

    tier: Tier
    customers: int
    cost_per_year: float
    cost_per_customer: float
    """``cost_per_year`` / ``customers`` (0 for an empty tier)."""


class ChurnBand(msgspec.Struct, frozen=True):
    band: str
    """Churn risk range in points, e.g. ``"70-75"``."""
    customers: int


class TrendPoint(msgspec.Struct, frozen=True):
    day: str
    mean_churn_risk: float
    high_risk_share: float
    """Share of customers at or above 70 points."""


class DayCount(msgspec.Struct, frozen=True):
    day: str
    """UTC date, e.g. ``"2026-11-25"``."""
    count: int


class PortfolioReport(msgspec.Struct, frozen=True):
    """Portfolio figures over the last ``days`` days (money in the business currency)."""

    days: int
    customers: int
    active_subscriptions: int
    mrr: float
    arr: float
    new_customers: int
    new_mrr: float
    expansion_mrr: float
    contraction_mrr: float
    net_expansion_mrr: float
    """Upsells net of downgrades."""
    churned_mrr: float
    cancellations: int
    customer_churn_rate: float
    """Customers lost / customers at the start of the period."""
    revenue_churn_rate: float
    """MRR lost to cancellations / MRR at the start of the period."""
    net_revenue_retention: float
    """(start MRR + expansion - contraction - churned) / start MRR."""
    cac_total: float
    clv_total: float
    clv_to_cac: float | None
    tiers: list[TierCount]
    churn_risk: list[ChurnBand]
    churn_trend: list[TrendPoint]
    """One point per day the report was computed (sampled daily)."""
    service_cost_per_year: float = 0.0
    """All customers' support cost per year, as CLV counts it (the policy's prices)."""
    service_cost: list[TierServiceCost] = []
    """Support cost per year by tier (tiers as in ``tiers``), so a tier's cost can be compared over time."""
    churn_alerts: int = 0
    """Churn alerts raised in the period (upward crossings of the alert threshold)."""
    churn_alerts_by_day: list[DayCount] = []
    """Days of the period with alerts (days without are left out)."""
