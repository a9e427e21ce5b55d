"""Wire contracts for the customer event stream (topic ``customer-events``).

Every event is a msgspec Struct in one tagged union, discriminated by ``type``.
Producers key each Kafka record by ``customer_id`` so all events of one customer
land in one partition, in the order the producer sent them.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Literal, TypeAlias

import msgspec

__all__ = [
    "EVENT_TYPES",
    "SCHEMA_VERSION",
    "AwareDatetime",
    "CustomerEvent",
    "CustomerProfile",
    "ErasureRequested",
    "EventBase",
    "NpsResponse",
    "OrderPlaced",
    "Outcome",
    "Payment",
    "SubscriptionChanged",
    "TicketOpened",
    "TicketResolved",
    "Usage",
    "event_decoder",
    "event_encoder",
]

SCHEMA_VERSION = 1

AwareDatetime = Annotated[
    datetime, msgspec.Meta(tz=True, description="RFC 3339 timestamp with an offset (UTC preferred)")
]
Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")]
Money = Annotated[float, msgspec.Meta(ge=0, le=1e9)]
SignedMoney = Annotated[float, msgspec.Meta(ge=-1e9, le=1e9)]
Sentiment = Annotated[float, msgspec.Meta(ge=-1.0, le=1.0, description="-1 very negative .. +1 very positive")]
Severity = Literal["low", "normal", "high", "urgent"]


class EventBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", forbid_unknown_fields=True):
    """Fields every event carries."""

    event_id: Identifier
    """Unique per event; a producer retry reuses it, which is how duplicates are recognised."""
    customer_id: Identifier
    """The business's own customer key; also the Kafka record key."""
    occurred_at: AwareDatetime
    """Event time (when it happened in the business), not when it reached Kafka."""
    schema_version: Annotated[int, msgspec.Meta(ge=1, le=SCHEMA_VERSION)] = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.occurred_at.utcoffset() != UTC.utcoffset(None):
            # Normalise once at the edge so the reducer only ever sees UTC.
            msgspec.structs.force_setattr(self, "occurred_at", self.occurred_at.astimezone(UTC))


class CustomerProfile(EventBase, frozen=True, tag="customer_profile"):
    """Who the customer is. Later profiles (by ``occurred_at``) replace earlier ones."""

    segment: Literal["consumer", "smb", "mid_market", "enterprise"] = "smb"
    plan: Annotated[str, msgspec.Meta(max_length=64)] = "none"
    phones: Annotated[list[Annotated[str, msgspec.Meta(max_length=32)]], msgspec.Meta(max_length=8)] = []
    """Phone numbers in any common notation; stored only as keyed hashes of their E.164 form."""
    emails: Annotated[list[Annotated[str, msgspec.Meta(max_length=254)]], msgspec.Meta(max_length=8)] = []
    """E-mail addresses; stored only as keyed hashes of their normalised form."""
    acquisition_cost: Money = 0.0
    signup_date: date | None = None
    company_size: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] | None = None
    automated_decision_consent: bool = True
    """GDPR art. 22: False means decisions must be reviewable by a human (flagged in every decision)."""


class OrderPlaced(EventBase, frozen=True, tag="order_placed"):
    order_id: Identifier
    amount: Money
    margin: Money | None = None
    """Gross margin of the order; when absent the configured default margin rate applies."""
    currency: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")] = "EUR"


class Payment(EventBase, frozen=True, tag="payment"):
    invoice_id: Identifier
    amount: Money
    status: Literal["due", "paid", "late"]
    """``due``: invoice issued; ``paid``: paid by the due date; ``late``: paid after it or overdue."""
    days_late: Annotated[int, msgspec.Meta(ge=0, le=3650)] = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.status != "late" and self.days_late:
            raise ValueError("days_late is only allowed with status 'late'")


class SubscriptionChanged(EventBase, frozen=True, tag="subscription_changed"):
    change: Literal["new", "upgrade", "downgrade", "add_on", "renewal", "cancel"]
    plan: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    mrr_delta: SignedMoney = 0.0
    """Change of monthly recurring revenue caused by this event (negative for downgrade/cancel)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.change in ("upgrade", "add_on", "new") and self.mrr_delta < 0:
            raise ValueError(f"mrr_delta must be >= 0 for change '{self.change}'")
        if self.change in ("downgrade", "cancel") and self.mrr_delta > 0:
            raise ValueError(f"mrr_delta must be <= 0 for change '{self.change}'")


class TicketOpened(EventBase, frozen=True, tag="ticket_opened"):
    ticket_id: Identifier
    severity: Severity = "normal"
    category: Annotated[str, msgspec.Meta(max_length=64)] = "general"
    channel: Literal["email", "phone", "chat", "web", "social"] = "email"


class TicketResolved(EventBase, frozen=True, tag="ticket_resolved"):
    ticket_id: Identifier
    severity: Severity = "normal"
    sentiment: Sentiment = 0.0
    csat: Annotated[int, msgspec.Meta(ge=1, le=5)] | None = None
    resolved: bool = True
    """False when the ticket was closed without solving the problem."""
    handling_minutes: Annotated[float, msgspec.Meta(ge=0, le=10080)] | msgspec.UnsetType | None = msgspec.UNSET
    """Agent time spent on the ticket, when the helpdesk reports it: priced by the policy's hourly rate.
    Left out (not written as null) when unknown, so events without it encode as they always did."""


class Usage(EventBase, frozen=True, tag="usage"):
    """Product usage aggregated by the producer, typically one event per customer per day."""

    logins: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 0
    features_used: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 0


class NpsResponse(EventBase, frozen=True, tag="nps_response"):
    score: Annotated[int, msgspec.Meta(ge=0, le=10)]


class Outcome(EventBase, frozen=True, tag="outcome"):
    """What actually happened: the labels the next training run learns from."""

    outcome: Literal["churned", "renewed", "upsold", "ticket_resolved"]
    decision_id: Annotated[str, msgspec.Meta(max_length=64)] | None = None


class ErasureRequested(EventBase, frozen=True, tag="erasure_requested"):
    """GDPR art. 17: forget the customer; older events must not bring them back."""


CustomerEvent: TypeAlias = (
    CustomerProfile
    | OrderPlaced
    | Payment
    | SubscriptionChanged
    | TicketOpened
    | TicketResolved
    | Usage
    | NpsResponse
    | Outcome
    | ErasureRequested
)

EVENT_TYPES: tuple[type[EventBase], ...] = (
    CustomerProfile,
    OrderPlaced,
    Payment,
    SubscriptionChanged,
    TicketOpened,
    TicketResolved,
    Usage,
    NpsResponse,
    Outcome,
    ErasureRequested,
)

# Built once: decoding straight into the typed union is the hot path of the consumer.
event_decoder: msgspec.json.Decoder[CustomerEvent] = msgspec.json.Decoder(CustomerEvent)
event_encoder = msgspec.json.Encoder()
