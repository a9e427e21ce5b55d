"""The connector interface, the write-back job, and what every helpdesk shares.

A connector is one helpdesk. On the way in, its webhook body (or a ticket it follows) becomes an
:class:`Inbound`: a ticket number, the customer references to try in order, and the contact's
channel, category and priority, decoded leniently (blank means absent, enums in any case,
display names such as "Normal" or "Web Form" mapped). On the way out, :meth:`Connector.write_back`
applies a :class:`WriteBack` through the helpdesk's own API: queue or group, priority, due date,
tier and next-best-action (custom fields or tags) and an internal note with the reasons.

Write-backs are idempotent per (ticket, decision): the note carries :func:`marker`, a connector
looks for it among the ticket's notes first and does nothing when it is there, and it writes the
note last, so a marker on the ticket means everything landed. (The look is skipped on a
write-back's very first delivery, which nobody can have written yet: one request less.) A failure raises :class:`Retry`
(the outbox tries again later, after ``Retry-After`` when the helpdesk sent one) or
:class:`Permanent` (the helpdesk refused the request: 4xx; trying again cannot help, so it is
dead-lettered at once with the cause). A :class:`Retry` is ``helpdesk_wide`` when the helpdesk as
a whole cannot take requests now (unreachable, timed out, 502/503/504, 429 rate limit): such an
attempt does not count against the write-back, and the worker pauses the whole connector instead
of trying every queued write-back against a helpdesk that is down.
"""

from __future__ import annotations

import abc
import email.utils
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

import httpx
import msgspec

from schemas.api import Action, Category, Channel, CustomerRef, Decision, HelpdeskRouting, Tier
from schemas.events import Severity

__all__ = [
    "FAILURE_KINDS",
    "SEVERITIES",
    "Connector",
    "Inbound",
    "Permanent",
    "Retry",
    "WriteBack",
    "WriteBackError",
    "category_of",
    "channel_of",
    "effective_priority",
    "helpdesk_routing",
    "json_of",
    "marker",
    "note_text",
    "retry_after_s",
    "router_tags",
    "routing_of",
    "severity_of",
    "text_or_none",
    "ticket_number",
    "writeback_of",
]

SEVERITIES: tuple[Severity, ...] = ("low", "normal", "high", "urgent")
_RANK: dict[str, int] = {s: i for i, s in enumerate(SEVERITIES)}
DEFAULT_TIER_PRIORITY: dict[str, Severity] = {"VIP": "high", "Premium": "normal"}
"""A VIP's ticket is at least high, a Premium's at least normal, whatever the requester chose."""
ROUTER_TAG_PREFIXES = ("router_tier_", "router_role_", "router_action_", "router_degraded", "router_override")
RETRY_AFTER_MAX_S = 3600.0


class Inbound(msgspec.Struct, frozen=True, kw_only=True):
    """A ticket to route, as decoded from a helpdesk."""

    ticket: str
    """The helpdesk's ticket number; empty when the body named none (routed, but nothing to write back to)."""
    customers: tuple[CustomerRef, ...] = ()
    """References to try in order (external id, e-mail, phone); none usable: the default routing."""
    channel: Channel = "ticket"
    category: Category = "general"
    priority: Severity | None = None
    """What the requester or helpdesk chose, if anything."""
    received_at: datetime | None = None


class WriteBack(msgspec.Struct, frozen=True, kw_only=True):
    """One decision to write back to one ticket: what the outbox holds (no customer identifiers)."""

    connector: str
    ticket: str
    decision_id: str
    tier: Tier
    queue: str
    """The policy's escalation queue; each connector maps it to a queue or group of its helpdesk."""
    role: str
    priority: Severity
    """The ticket's priority: the requester's, raised to the tier's floor."""
    due_at: datetime
    clock: str
    actions: tuple[Action, ...]
    reasons: tuple[str, ...]
    customer_known: bool
    degraded: bool
    overridden: bool = False
    decided_at: float
    """Unix time of the decision (the write-back's lag is measured from here)."""
    attempts: int = 0
    last_error: str | None = None


FAILURE_KINDS = (
    "timeout", "unreachable", "rate_limited", "unavailable", "server_error", "conflict", "refused", "unreadable",
)  # fmt: skip
"""What went wrong, in a few words fit for a metric label (``cause`` of ``router_connector_writeback_failures_total``)."""


class WriteBackError(Exception):
    """A write-back that did not land; ``cause`` is short, safe to store and show (no secrets, no PII).

    ``kind`` is one of :data:`FAILURE_KINDS`: the cause without its details, for metrics.
    """

    def __init__(self, cause: str, *, kind: str = "unreadable") -> None:
        super().__init__(cause)
        self.cause = cause
        self.kind = kind


class Retry(WriteBackError):
    """Transient: try again later (``after_s`` from the helpdesk's Retry-After, if it sent one).

    ``helpdesk_wide``: the helpdesk cannot take any request now (down, overloaded, rate-limited).
    """

    def __init__(
        self, cause: str, after_s: float | None = None, *, helpdesk_wide: bool = False, kind: str = "unreadable"
    ) -> None:
        super().__init__(cause, kind=kind)
        self.after_s = after_s
        self.helpdesk_wide = helpdesk_wide


class Permanent(WriteBackError):
    """The helpdesk refused the request; trying again cannot help."""

    def __init__(self, cause: str, *, kind: str = "refused") -> None:
        super().__init__(cause, kind=kind)


class Connector(abc.ABC):
    """One helpdesk's write-back side. Built once per ``router connect`` process, closed at its end."""

    name: ClassVar[str]

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    @abc.abstractmethod
    async def write_back(self, job: WriteBack, *, check: bool = True) -> bool:
        """Apply ``job`` to its ticket; False when its marker was already there (nothing written).

        ``check=False`` skips the look for the marker: only for a write-back on its very first
        delivery, which nobody can have written yet (a retried, taken-over or requeued one is checked).
        """

    async def probe(self) -> list[str]:
        """Problems with the configuration that the helpdesk can tell (unknown queue, field...); [] when fine."""
        return []

    async def aclose(self) -> None:
        await self.client.aclose()

    async def request(self, method: str, path: str, *, ok: tuple[int, ...] = (200,), **kwargs: Any) -> httpx.Response:
        """One API call; a failure becomes :class:`Retry` or :class:`Permanent` naming method, path and status."""
        what = f"{method} {_template(path)}"
        try:
            response = await self.client.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise Retry(f"{what}: timed out", helpdesk_wide=True, kind="timeout") from None
        except httpx.TransportError as exc:
            raise Retry(
                f"{what}: {type(exc).__name__} (helpdesk unreachable)", helpdesk_wide=True, kind="unreachable"
            ) from None
        status = response.status_code
        if status in ok:
            return response
        cause = f"{what}: HTTP {status}"
        after = retry_after_s(response.headers.get("retry-after"))
        if status in _HELPDESK_WIDE:
            raise Retry(cause, after, helpdesk_wide=True, kind="rate_limited" if status == 429 else "unavailable")
        if status in (408, 409, 425):
            raise Retry(cause, after, kind="conflict")
        if status >= 500:
            raise Retry(cause, after, kind="server_error")
        raise Permanent(cause)


def json_of(response: httpx.Response) -> Any:
    """The JSON of a helpdesk's answer; an unreadable one is retried (a proxy's error page, a cut answer)."""
    try:
        return response.json()
    except ValueError:
        raise Retry(f"{response.request.method} {_template(response.request.url.path)}: unreadable answer") from None


_HELPDESK_WIDE = frozenset({429, 502, 503, 504})
"""Rate limited, or the helpdesk behind its proxy is down: nothing this write-back did."""
_NUMBERS = re.compile(r"/\d+")


def _template(path: str) -> str:
    """``/api/v2/tickets/42`` -> ``/api/v2/tickets/{id}``: causes and logs stay low-cardinality."""
    return _NUMBERS.sub("/{id}", path.split("?", 1)[0])


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date), capped at an hour; None if absent or unreadable."""
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(0.0, seconds), RETRY_AFTER_MAX_S)


# -- lenient decoding ---------------------------------------------------------------------------


def text_or_none(value: object, max_length: int = 254) -> str | None:
    """A template value as text: blank (or a lone placeholder dash) is absent, numbers become text."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        value = str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or text == "-" or len(text) > max_length:
        return None
    return text


_TICKET = re.compile(r"^#?(\d{1,18})$")


def ticket_number(value: object) -> str | None:
    """A helpdesk ticket number (``123``, ``"123"``, ``"#123"``) as digits; None when it is not one."""
    text = text_or_none(value, 32)
    match = _TICKET.match(text) if text else None
    return (match.group(1).lstrip("0") or "0") if match else None


def _key(value: object) -> str | None:
    text = text_or_none(value, 64)
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") if text else None


_SEVERITY_NAMES: dict[str, Severity] = {
    "low": "low",
    "normal": "normal",
    "medium": "normal",  # Freshdesk
    "high": "high",
    "urgent": "urgent",
    "critical": "urgent",
    "1": "low",  # Freshdesk's numeric priorities
    "2": "normal",
    "3": "high",
    "4": "urgent",
}


def severity_of(value: object) -> Severity | None:
    """``"Normal"``, ``"URGENT"``, ``"Medium"``, ``3`` ... as a severity; blank or unknown: None."""
    key = _key(value)
    return _SEVERITY_NAMES.get(key) if key else None


_CHANNEL_NAMES: dict[str, Channel] = {
    "email": "email",
    "mail": "email",
    "e_mail": "email",
    "outbound_email": "email",
    "1": "email",  # Freshdesk sources
    "web": "web",
    "web_form": "web",
    "web_widget": "web",
    "portal": "web",
    "help_center": "web",
    "feedback_widget": "web",
    "feedbackwidget": "web",
    "2": "web",
    "9": "web",
    "voice": "phone",
    "phone": "phone",
    "phone_call": "phone",
    "phone_call_incoming": "phone",
    "phone_call_outbound": "phone",
    "voicemail": "phone",
    "3": "phone",
    "chat": "chat",
    "chat_transcript": "chat",
    "messaging": "chat",
    "native_messaging": "chat",
    "7": "chat",
    "twitter": "social",
    "facebook": "social",
    "facebook_post": "social",
    "facebook_message": "social",
    "instagram": "social",
    "instagram_direct": "social",
    "whatsapp": "social",
    "x_corp": "social",
    "forum": "social",
    "4": "social",
    "5": "social",
    "6": "social",
}


def channel_of(value: object) -> Channel:
    """A helpdesk's channel or source (``"Web Form"``, ``"Phone call (incoming)"``, Freshdesk's ``2``); unknown: ``ticket``."""
    key = _key(value)
    return _CHANNEL_NAMES.get(key, "ticket") if key else "ticket"


_CATEGORY_NAMES: dict[str, Category] = {
    "technical": "technical",
    "tech": "technical",
    "technical_issue": "technical",
    "technical_support": "technical",
    "billing": "billing",
    "invoice": "billing",
    "invoicing": "billing",
    "payment": "billing",
    "payments": "billing",
    "account": "account",
    "login": "account",
    "cancellation": "cancellation",
    "cancel": "cancellation",
    "churn": "cancellation",
    "sales": "sales",
    "pre_sales": "sales",
    "presales": "sales",
    "general": "general",
}


def category_of(value: object) -> Category:
    """A category in any case or a common synonym (``"Billing"``, ``"invoice"``); blank or unknown: ``general``."""
    key = _key(value)
    return _CATEGORY_NAMES.get(key, "general") if key else "general"


# -- the decision as a helpdesk sees it -----------------------------------------------------------


def effective_priority(asked: Severity | None, tier: str, floors: Mapping[Any, Severity]) -> Severity:
    """The requester's priority (normal when none), raised to the tier's floor."""
    base = asked or "normal"
    floor = floors.get(tier, "low")
    return base if _RANK[base] >= _RANK[floor] else floor


def router_tags(job: WriteBack) -> list[str]:
    """``router_tier_vip``, ``router_role_senior_advisor``, ``router_action_retention_offer``, ..."""
    return _tags(job.tier, job.role, [a.code for a in job.actions], job.degraded, job.overridden)


def _tags(tier: str, role: str, actions: list[str], degraded: bool, overridden: bool) -> list[str]:
    tags = [f"router_tier_{tier.lower()}", f"router_role_{role}", *(f"router_action_{a}" for a in actions)]
    if degraded:
        tags.append("router_degraded")
    if overridden:
        tags.append("router_override")
    return tags


def routing_of(
    d: Decision,
    asked: Severity | None,
    *,
    degraded: bool = False,
    floors: Mapping[Any, Severity] = DEFAULT_TIER_PRIORITY,
) -> HelpdeskRouting:
    """What a helpdesk trigger can apply as it is, for a decision made outside a connector."""
    return HelpdeskRouting(
        group=d.escalation.queue,
        priority=effective_priority(asked, d.tier, floors),
        tags=_tags(
            d.tier, d.escalation.role, [a.code for a in d.next_best_actions], d.degraded or degraded, d.overridden
        ),
        due_at=d.sla.due_at,
        decision_id=d.decision_id,
        degraded=d.degraded or degraded,
    )


def writeback_of(
    connector: str, inbound: Inbound, d: Decision, floors: Mapping[Any, Severity], *, degraded: bool = False
) -> WriteBack:
    """The write-back of decision ``d`` for ``inbound``'s ticket."""
    return WriteBack(
        connector=connector,
        ticket=inbound.ticket,
        decision_id=d.decision_id,
        tier=d.tier,
        queue=d.escalation.queue,
        role=d.escalation.role,
        priority=effective_priority(inbound.priority, d.tier, floors),
        due_at=d.sla.due_at,
        clock=f"{d.sla.clock}, {d.sla.calendar}",
        actions=tuple(d.next_best_actions),
        reasons=tuple(d.reasons),
        customer_known=d.customer_known,
        degraded=d.degraded or degraded,
        overridden=d.overridden,
        decided_at=time.time(),
    )


def helpdesk_routing(job: WriteBack) -> HelpdeskRouting:
    """What the webhook answers (a trigger may apply it as it is; Zendesk and Freshdesk ignore it)."""
    return HelpdeskRouting(
        group=job.queue,
        priority=job.priority,
        tags=router_tags(job),
        due_at=job.due_at,
        decision_id=job.decision_id,
        degraded=job.degraded,
    )


def marker(job: WriteBack) -> str:
    """The text that identifies this (ticket, decision) among the ticket's notes."""
    return f"[router-decision:{job.ticket}:{job.decision_id}]"


def note_text(job: WriteBack) -> str:
    """The internal note: the decision and why, in plain words; ends with the marker."""
    due = job.due_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    who = "known customer" if job.customer_known else "customer not known to router: default routing"
    lines = [
        f"Routed by router: tier {job.tier} ({who}), queue {job.queue}, role {job.role.replace('_', ' ')}, "
        f"priority {job.priority}.",
        f"First response due {due} ({job.clock}).",
    ]
    if job.reasons:
        lines.append("Why:")
        lines += [f"- {r}" for r in job.reasons]
    if job.actions:
        lines.append("Next best action:")
        lines += [f"- {a.label}" for a in job.actions]
    if job.degraded:
        lines.append("Decided in degraded mode (customer data unavailable): check the customer before relying on it.")
    lines.append(f"Decision {job.decision_id} {marker(job)}")
    return "\n".join(lines)
