"""The policy file as typed data: msgspec Structs, checked field by field and across fields.

The TOML file is parsed with :mod:`tomllib` and converted with :func:`msgspec.convert`;
nothing else reads it. Every problem raises :class:`PolicyError` whose message starts with
the exact path in the file (``calendars.de_office.hours.mon: '25:00' is not a time``), so
the person who edited the file can fix it without reading code.
"""

from __future__ import annotations

import hashlib
import re
import string
import tomllib
from datetime import date
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from router.core.reducer import CONTACT_CHANNELS, CONTACT_SEVERITIES
from router.core.scoring import ServicePrices
from router.policy.public_holidays import country_problem
from schemas.api import Category, Channel, Tier
from schemas.events import Severity

__all__ = [
    "PRIORITIES",
    "REASON_FIELDS",
    "TIERS",
    "WEEKDAYS",
    "CalendarSpec",
    "Condition",
    "Cutoffs",
    "EscalationSpec",
    "NbaRule",
    "NbaSpec",
    "PolicyError",
    "PolicySpec",
    "RoutingRule",
    "ServiceCostSpec",
    "SlaSpec",
    "SlaTarget",
    "SlaTiers",
    "Target",
    "TierSpec",
    "WeeklyHours",
    "parse_interval",
    "parse_policy",
    "parse_policy_text",
    "read_policy",
    "read_policy_file",
]

TIERS: tuple[Tier, ...] = ("VIP", "Premium", "Standard", "Basic")
PRIORITIES: tuple[Severity, ...] = ("low", "normal", "high", "urgent")
WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

REASON_FIELDS: frozenset[str] = frozenset(
    {
        "clv_percentile",
        "clv_top",
        "churn_pct",
        "upsell_pct",
        "advocacy_pct",
        "sentiment",
        "late_payments",
        "open_tickets",
        "nps",
        "mrr",
        "days_since_last_interaction",
        "support_cost",
        "tier",
        "segment",
        "channel",
        "category",
        "priority",
    }
)
"""Placeholders a reason template may use, e.g. ``"Churn risk high ({churn_pct} %)"``."""

Percentile = Annotated[float, msgspec.Meta(ge=0, le=100)]
Probability = Annotated[float, msgspec.Meta(ge=0, le=1)]
Signed = Annotated[float, msgspec.Meta(ge=-1, le=1)]
Count = Annotated[int, msgspec.Meta(ge=0)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Price = Annotated[float, msgspec.Meta(ge=0, le=1e6)]
Factor = Annotated[float, msgspec.Meta(ge=0, le=100)]

_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}\.\d+$")
_TIME = re.compile(r"^(\d{2}):(\d{2})$")


class PolicyError(ValueError):
    """The policy file cannot be used; the message names the path and the problem."""


class _Invalid(ValueError):
    """Raised inside ``__post_init__``: ``where`` extends the path msgspec reports."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}" if where else problem)
        self.where = where
        self.problem = problem


# ---------------------------------------------------------------------------------- tiers


class Cutoffs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """CLV percentile at or above which a customer gets the tier; below Standard is Basic."""

    VIP: Percentile = 90.0
    Premium: Percentile = 70.0
    Standard: Percentile = 10.0

    def __post_init__(self) -> None:
        if self.Premium >= self.VIP:
            raise _Invalid("", f"VIP cut-off {self.VIP:g} must be above Premium {self.Premium:g}")
        if self.Premium <= self.Standard:
            raise _Invalid("", f"Premium cut-off {self.Premium:g} must be above Standard {self.Standard:g}")


class TierSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    cutoffs: Cutoffs = msgspec.field(default_factory=Cutoffs)
    unknown: Tier = "Standard"
    """Tier of a customer without a snapshot (or without a value score yet)."""


# ------------------------------------------------------------------------------------ sla


class SlaTarget(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    hours: Annotated[float, msgspec.Meta(gt=0, le=8760)]
    clock: Literal["business_hours", "calendar"]
    calendar: Name


class SlaTiers(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    low: SlaTarget
    normal: SlaTarget
    high: SlaTarget
    urgent: SlaTarget


class SlaSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    VIP: SlaTiers
    Premium: SlaTiers
    Standard: SlaTiers
    Basic: SlaTiers


# ------------------------------------------------------------------------------ calendars


def parse_interval(text: str) -> tuple[int, int]:
    """``"08:00-18:00"`` -> minutes after midnight ``(480, 1080)``; ``24:00`` closes a day."""
    parts = text.split("-")
    if len(parts) != 2:
        raise ValueError(f"{text!r} is not an interval like '08:00-18:00'")
    out = []
    for part in parts:
        m = _TIME.match(part.strip())
        hh, mm = (int(m.group(1)), int(m.group(2))) if m else (99, 99)
        if not (m and ((hh < 24 and mm < 60) or (hh == 24 and mm == 0))):
            raise ValueError(f"{part.strip()!r} is not a time")
        out.append(hh * 60 + mm)
    if out[0] >= out[1]:
        raise ValueError(f"{text!r}: opening must be before closing")
    return out[0], out[1]


class WeeklyHours(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Open intervals per weekday, e.g. ``mon = ["08:00-12:00", "13:00-18:00"]``; [] is closed."""

    mon: list[str] = []
    tue: list[str] = []
    wed: list[str] = []
    thu: list[str] = []
    fri: list[str] = []
    sat: list[str] = []
    sun: list[str] = []

    def __post_init__(self) -> None:
        self.week()

    def week(self) -> list[list[tuple[int, int]]]:
        """Seven lists (Monday first) of ``(open, close)`` minutes; raises on bad or overlapping times."""
        week = []
        for day in WEEKDAYS:
            texts: list[str] = getattr(self, day)
            spans: list[tuple[int, int, str]] = []
            for text in texts:
                try:
                    a, b = parse_interval(text)
                except ValueError as exc:
                    raise _Invalid(day, str(exc)) from None
                spans.append((a, b, text))
            spans.sort()
            for (_, b0, t0), (a1, _, t1) in pairwise(spans):
                if a1 < b0:
                    raise _Invalid(day, f"{t1!r} overlaps {t0!r}")
            week.append([(a, b) for a, b, _ in spans])
        return week


class CalendarSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A business-hours calendar: IANA time zone, weekly hours, public holidays of a country
    (generated for every year the SLA clock reaches) and explicitly listed closed days."""

    timezone: str
    hours: WeeklyHours
    country: Annotated[str, msgspec.Meta(min_length=2, max_length=3)] | None = None
    """ISO 3166-1 alpha-2 code whose public holidays close the calendar (``holidays`` package)."""
    subdivision: Name | None = None
    """State or region of ``country`` with holidays of its own (e.g. 'BE' for Berlin)."""
    holidays: list[date] = []
    """Further closed days: company holidays and closures (every holiday, without a country)."""

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise _Invalid("timezone", f"unknown time zone {self.timezone!r}") from None
        if self.subdivision is not None and self.country is None:
            raise _Invalid("subdivision", "needs a country")
        if self.country is not None:
            problem = country_problem(self.country, self.subdivision)
            if problem is not None:
                raise _Invalid(*problem)
        if not any(self.hours.week()):
            # No deadline could ever be reached on such a calendar.
            raise _Invalid("hours", "no open hours in the week")


# ----------------------------------------------------------------------------- escalation


class Target(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    queue: Name
    role: Name
    skill: Name | None = None


class EscalationSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    VIP: Target
    Premium: Target
    Standard: Target
    Basic: Target


# ---------------------------------------------------------------------------- cost to serve


class ChannelPrices(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Price of one ticket opened on each channel (at the ``normal`` severity)."""

    email: Price = 0.0
    phone: Price = 0.0
    chat: Price = 0.0
    web: Price = 0.0
    social: Price = 0.0


class SeverityFactors(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Multiplier of the channel price per ticket severity."""

    low: Factor = 1.0
    normal: Factor = 1.0
    high: Factor = 1.0
    urgent: Factor = 1.0


class ServiceCostSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What serving a customer costs: CLV subtracts it, the portfolio shows it per tier."""

    currency: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")] = "EUR"
    per_contact: ChannelPrices = msgspec.field(default_factory=ChannelPrices)
    severity_factor: SeverityFactors = msgspec.field(default_factory=SeverityFactors)
    per_hour: Price = 0.0
    """Price of an hour of handling time; a ticket whose resolution reports it is priced by the hour."""

    def prices(self) -> ServicePrices:
        """The table as the scoring code reads it (see ``router.core.scoring.support_cost``)."""
        per_contact = tuple(
            getattr(self.per_contact, c) * getattr(self.severity_factor, s)
            for c in CONTACT_CHANNELS
            for s in CONTACT_SEVERITIES
        )
        return ServicePrices(per_contact, self.per_hour, self.currency)


# ------------------------------------------------------------------------------ conditions

_RANGES: tuple[str, ...] = (
    "clv_percentile",
    "churn",
    "upsell",
    "advocacy",
    "sentiment",
    "late_payments",
    "open_tickets",
    "nps",
    "mrr",
    "days_since_last_interaction",
    "support_cost",
)


class Condition(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """All given fields must hold. A threshold on a score the customer does not have yet
    (``None``) does not hold: an unknown churn risk is not a high one."""

    known: bool | None = None
    tiers: list[Tier] | None = None
    categories: list[Category] | None = None
    channels: list[Channel] | None = None
    priorities: list[Severity] | None = None
    segments: list[Name] | None = None
    subscription_active: bool | None = None
    min_clv_percentile: Percentile | None = None
    max_clv_percentile: Percentile | None = None
    min_churn: Probability | None = None
    max_churn: Probability | None = None
    min_upsell: Probability | None = None
    max_upsell: Probability | None = None
    min_advocacy: Probability | None = None
    max_advocacy: Probability | None = None
    min_sentiment: Signed | None = None
    max_sentiment: Signed | None = None
    min_late_payments: Count | None = None
    max_late_payments: Count | None = None
    min_open_tickets: Count | None = None
    max_open_tickets: Count | None = None
    min_nps: Annotated[int, msgspec.Meta(ge=0, le=10)] | None = None
    max_nps: Annotated[int, msgspec.Meta(ge=0, le=10)] | None = None
    min_mrr: Annotated[float, msgspec.Meta(ge=0)] | None = None
    max_mrr: Annotated[float, msgspec.Meta(ge=0)] | None = None
    min_days_since_last_interaction: Annotated[float, msgspec.Meta(ge=0)] | None = None
    max_days_since_last_interaction: Annotated[float, msgspec.Meta(ge=0)] | None = None
    min_support_cost: Annotated[float, msgspec.Meta(ge=0)] | None = None
    """Support cost per year (the policy's currency), as CLV counts it."""
    max_support_cost: Annotated[float, msgspec.Meta(ge=0)] | None = None

    def __post_init__(self) -> None:
        for name in _RANGES:
            lo, hi = getattr(self, f"min_{name}"), getattr(self, f"max_{name}")
            if lo is not None and hi is not None and lo > hi:
                raise _Invalid("", f"min_{name} {lo:g} is above max_{name} {hi:g}: the rule can never match")
        for name in ("tiers", "categories", "channels", "priorities", "segments"):
            if getattr(self, name) == []:
                raise _Invalid(name, "empty list: the rule can never match (leave it out to match all)")

    def ranges(self) -> list[tuple[str, float | None, float | None]]:
        """``(input field, min, max)`` for every numeric threshold that is set."""
        out = []
        for name in _RANGES:
            lo, hi = getattr(self, f"min_{name}"), getattr(self, f"max_{name}")
            if lo is not None or hi is not None:
                out.append((name, lo, hi))
        return out


def _check_template(text: str | None) -> None:
    if text is None:
        return
    try:
        fields = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise _Invalid("reason", f"{text!r}: {exc}") from None
    for _, field, spec, conv in fields:
        if field is None:
            continue
        if field not in REASON_FIELDS:
            known = ", ".join(sorted(REASON_FIELDS))
            raise _Invalid("reason", f"unknown placeholder {{{field}}} (known: {known})")
        if spec or conv:
            raise _Invalid("reason", f"placeholder {{{field}}} takes no format; values come pre-formatted")


class RoutingRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """First matching rule wins; unset target fields keep the tier's escalation target."""

    name: Name
    when: Condition = msgspec.field(default_factory=Condition)
    queue: Name | None = None
    role: Name | None = None
    skill: Name | None = None
    sla_tier: Tier | None = None
    """Answer within this tier's SLA instead of the customer's own."""
    action: Name | None = None
    """Next-best-action put first (a code from ``[actions]``)."""
    reason: Text | None = None

    def __post_init__(self) -> None:
        if all(v is None for v in (self.queue, self.role, self.skill, self.sla_tier, self.action)):
            raise _Invalid("", "rule changes nothing: set queue, role, skill, sla_tier or action")
        _check_template(self.reason)


class NbaRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    action: Name
    when: Condition = msgspec.field(default_factory=Condition)
    reason: Text | None = None

    def __post_init__(self) -> None:
        _check_template(self.reason)


class NbaSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Ordered rules; every matching rule adds its action (deduplicated) up to ``max_actions``."""

    fallback: Name
    """Action when no rule matched, so the agent always gets one."""
    max_actions: Annotated[int, msgspec.Meta(ge=1, le=3)] = 3
    rules: list[NbaRule] = []


# ---------------------------------------------------------------------------------- policy


class PolicySpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The whole policy file."""

    version: str
    tiers: TierSpec
    sla: SlaSpec
    calendars: dict[Name, CalendarSpec]
    escalation: EscalationSpec
    actions: dict[Name, Text]
    """Action code -> what the agent should do, in plain words."""
    next_best_action: NbaSpec
    routing: list[RoutingRule] = []
    service_cost: ServiceCostSpec = msgspec.field(default_factory=ServiceCostSpec)
    """Prices of support contacts (optional: without it CLV counts no cost to serve)."""

    def __post_init__(self) -> None:
        if not _VERSION.match(self.version):
            raise _Invalid("version", f"{self.version!r} must look like YYYY-MM-DD.N (e.g. '2026-11-25.1')")
        for tier in TIERS:
            targets: SlaTiers = getattr(self.sla, tier)
            for prio in PRIORITIES:
                cal = getattr(targets, prio).calendar
                if cal not in self.calendars:
                    raise _Invalid(f"sla.{tier}.{prio}.calendar", f"unknown calendar {cal!r}{self._known_calendars()}")
        seen: set[str] = set()
        for i, rule in enumerate(self.routing):
            if rule.name in seen:
                raise _Invalid(f"routing[{i}].name", f"duplicate rule name {rule.name!r}")
            seen.add(rule.name)
            if rule.action is not None and rule.action not in self.actions:
                raise _Invalid(f"routing[{i}].action", f"unknown action {rule.action!r}{self._known_actions()}")
        for i, nba in enumerate(self.next_best_action.rules):
            if nba.action not in self.actions:
                raise _Invalid(
                    f"next_best_action.rules[{i}].action",
                    f"unknown action {nba.action!r}{self._known_actions()}",
                )
        if self.next_best_action.fallback not in self.actions:
            raise _Invalid(
                "next_best_action.fallback",
                f"unknown action {self.next_best_action.fallback!r}{self._known_actions()}",
            )

    def _known_calendars(self) -> str:
        return f" (known: {', '.join(sorted(self.calendars))})"

    def _known_actions(self) -> str:
        return f" (known: {', '.join(sorted(self.actions))})"


# --------------------------------------------------------------------------------- loading

T = TypeVar("T")


def _convert(raw: Any, typ: type[T], prefix: str) -> T:
    try:
        return msgspec.convert(raw, typ)
    except msgspec.ValidationError as exc:
        raise PolicyError(_explain(exc, prefix)) from None


def _explain(exc: msgspec.ValidationError, prefix: str) -> str:
    text = str(exc)
    problem, sep, where = text.rpartition(" - at `")
    path = where.rstrip("`").lstrip("$") if sep else ""
    if not sep:
        problem = text
    cause = exc.__cause__
    if isinstance(cause, _Invalid):
        problem = cause.problem
        if cause.where:
            path = f"{path}.{cause.where}"
    path = f"{prefix}{path}".strip(".")
    return f"{path or 'top level'}: {problem}"


def parse_policy(raw: dict[str, Any]) -> PolicySpec:
    """Validate a parsed TOML document into a :class:`PolicySpec`; raises :class:`PolicyError`."""
    if not isinstance(raw, dict):
        raise PolicyError("top level: expected a table")
    # msgspec reports a bad dict value as ``$.calendars[...]``; converting the named entries
    # one by one first puts the name the operator chose into the path.
    for section, typ in (("calendars", CalendarSpec), ("actions", Text)):
        entries = raw.get(section)
        if isinstance(entries, dict):
            for key, value in entries.items():
                _convert(value, typ, f"{section}.{key}")
    return _convert(raw, PolicySpec, "")


def read_policy(path: str | Path) -> PolicySpec:
    """Read and validate a policy file; raises :class:`PolicyError` naming the file on I/O or TOML errors."""
    return read_policy_file(path)[0]


def read_policy_file(path: str | Path) -> tuple[PolicySpec, str]:
    """:func:`read_policy`, and the SHA-256 (hex) of the bytes it read."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise PolicyError(f"{p}: cannot read policy file: {exc.strerror or exc}") from None
    try:
        raw = tomllib.loads(data.decode())
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{p}: not valid TOML: {exc}") from None
    return parse_policy(raw), hashlib.sha256(data).hexdigest()


def parse_policy_text(text: str, source: str = "draft") -> PolicySpec:
    """Validate policy TOML held in memory (a draft, a stored version); messages as :func:`read_policy`'s,
    with ``source`` where a file would be named."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: not valid TOML: {exc}") from None
    return parse_policy(raw)
