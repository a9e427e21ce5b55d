"""Interpret the policy: tier, SLA deadline, escalation target, next-best-actions, reasons.

:func:`load_policy` does all the slow work once (TOML, validation, building calendars,
turning every rule condition into a tuple of small predicates); :func:`decide` then only
compares numbers and looks up dictionaries, because it runs on the request hot path.
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

import msgspec

from router.policy.public_holidays import holidays_of
from router.policy.sla import Calendar, Clock, deadline
from router.policy.spec import (
    PRIORITIES,
    REASON_FIELDS,
    TIERS,
    Condition,
    PolicySpec,
    Target,
    parse_policy_text,
    read_policy,
)
from schemas.api import Action, Escalation, SlaDeadline, Tier

__all__ = [
    "DecisionInput",
    "Policy",
    "PolicyDecision",
    "compile_policy",
    "decide",
    "load_policy",
    "policy_from_text",
]

MAX_REASONS = 3


class DecisionInput(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the policy may look at. No personal data: scores and counts only."""

    known: bool
    """The customer has a snapshot."""
    clv_percentile: float | None
    """CLV percentile in the current population, 0-100."""
    churn: float | None
    """Churn probability, 0-1."""
    upsell: float | None
    """Upsell potential, 0-1."""
    advocacy: float | None
    """Willingness to recommend, 0-1."""
    sentiment: float | None
    """Recent tone, -1..1 (the caller blends in the request's own text sentiment)."""
    segment: str
    channel: str
    category: str
    priority: str
    open_tickets: int = 0
    late_payments_90d: int = 0
    nps: int | None = None
    subscription_active: bool = False
    mrr: float = 0.0
    days_since_last_interaction: float | None = None
    support_cost: float | None = None
    """Support cost per year, as CLV counts it (the policy's ``service_cost.currency``)."""
    override_tier: str | None = None
    """A person's override of the tier; the caller has already dropped expired overrides."""


class PolicyDecision(msgspec.Struct, frozen=True):
    """What the policy decided; the API adds identity, scores and versions around it."""

    tier: Tier
    sla: SlaDeadline
    escalation: Escalation
    actions: list[Action]
    reasons: list[str]
    """At most three, plain words, most important first."""


# ------------------------------------------------------------------------ compiled rules

Check = Callable[["DecisionInput", str], bool]
"""A compiled condition: ``check(inp, tier) -> bool``."""

# Condition field -> DecisionInput attribute. Only these fixed names ever reach the
# generated source; thresholds and sets are passed in as bound values, never as text.
_SETS = (
    ("categories", "category"),
    ("channels", "channel"),
    ("priorities", "priority"),
    ("segments", "segment"),
)
_INPUT_ATTR = {"late_payments": "late_payments_90d"}


def _compile(cond: Condition) -> Check:
    """Turn a condition into one predicate function.

    One generated function with an ``and`` chain is several times faster than looping over
    a list of small closures, and :func:`decide` evaluates every rule on every request.
    """
    terms: list[str] = []
    env: dict[str, object] = {}

    def bind(value: object) -> str:
        name = f"_c{len(env)}"
        env[name] = value
        return name

    # Cheap, selective checks first: most rules fail on category or tier.
    for field, attr in _SETS:
        values = getattr(cond, field)
        if values is not None:
            terms.append(f"i.{attr} in {bind(frozenset(values))}")
    if cond.tiers is not None:
        terms.append(f"t in {bind(frozenset(cond.tiers))}")
    if cond.known is not None:
        terms.append(f"i.known == {bind(cond.known)}")
    if cond.subscription_active is not None:
        terms.append(f"i.subscription_active == {bind(cond.subscription_active)}")
    for name, lo, hi in cond.ranges():
        attr = _INPUT_ATTR.get(name, name)
        # A missing score never satisfies a threshold.
        terms.append(f"(v := i.{attr}) is not None")
        if lo is not None:
            terms.append(f"v >= {bind(lo)}")
        if hi is not None:
            terms.append(f"v <= {bind(hi)}")
    source = f"lambda i, t: {' and '.join(terms) or 'True'}"
    # eval is safe here: the source holds only the fixed attribute names above and the
    # generated _cN names; every value from the policy file is bound in env, never pasted.
    check: Check = eval(source, env)
    return check


_FIELD_GETTERS: dict[str, Callable[[DecisionInput, str], object]] = {
    "clv_percentile": lambda i, t: "?" if i.clv_percentile is None else f"{i.clv_percentile:.0f}",
    "clv_top": lambda i, t: "?" if i.clv_percentile is None else _top(i.clv_percentile),
    "churn_pct": lambda i, t: _pct(i.churn),
    "upsell_pct": lambda i, t: _pct(i.upsell),
    "advocacy_pct": lambda i, t: _pct(i.advocacy),
    "sentiment": lambda i, t: "?" if i.sentiment is None else f"{i.sentiment:+.1f}",
    "late_payments": lambda i, t: i.late_payments_90d,
    "open_tickets": lambda i, t: i.open_tickets,
    "nps": lambda i, t: "?" if i.nps is None else i.nps,
    "mrr": lambda i, t: f"{i.mrr:.0f}",
    "days_since_last_interaction": lambda i, t: (
        "?" if i.days_since_last_interaction is None else f"{i.days_since_last_interaction:.0f}"
    ),
    "support_cost": lambda i, t: "?" if i.support_cost is None else f"{i.support_cost:,.0f}",
    "tier": lambda i, t: t,
    "segment": lambda i, t: i.segment,
    "channel": lambda i, t: i.channel,
    "category": lambda i, t: i.category,
    "priority": lambda i, t: i.priority,
}
assert set(_FIELD_GETTERS) == REASON_FIELDS


class _Template:
    """A reason text; only the placeholders it uses are computed, and only when it is chosen."""

    __slots__ = ("getters", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        names = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
        self.getters = tuple((n, _FIELD_GETTERS[n]) for n in sorted(names))

    def render(self, inp: DecisionInput, tier: str) -> str:
        if not self.getters:
            return self.text
        return self.text.format_map({n: get(inp, tier) for n, get in self.getters})


def _pct(x: float | None) -> str:
    return "?" if x is None else f"{x * 100:.0f}"


def _top(pct: float) -> int:
    # "Top 8 %" for percentile 92; never "Top 0 %". Out-of-range input (even NaN) is clamped
    # rather than allowed to raise on the request path.
    if not 0.0 <= pct <= 100.0:
        pct = 100.0 if pct > 100.0 else 0.0
    return max(1, math.ceil(100.0 - pct))


class _Route:
    __slots__ = ("action", "checks", "name", "reason", "sla_tier", "targets")

    def __init__(
        self,
        name: str,
        checks: Check,
        targets: Mapping[str, Escalation],
        sla_tier: Tier | None,
        action: Action | None,
        reason: _Template | None,
    ) -> None:
        self.name = name
        self.checks = checks
        self.targets = targets
        self.sla_tier = sla_tier
        self.action = action
        self.reason = reason


class _NbaRule:
    __slots__ = ("action", "checks", "reason")

    def __init__(self, checks: Check, action: Action, reason: _Template | None) -> None:
        self.checks = checks
        self.action = action
        self.reason = reason


class _Sla:
    __slots__ = ("calendar", "clock", "hours", "name")

    def __init__(self, hours: float, clock: Clock, calendar: Calendar) -> None:
        self.hours = hours
        self.clock = clock
        self.calendar = calendar
        self.name = calendar.name


# ----------------------------------------------------------------------------------- policy


class Policy:
    """A loaded, validated and precompiled policy. Immutable once built.

    Built only by :func:`load_policy` / :func:`compile_policy`; holds no global state, so
    a reload builds a new object and swaps the reference (see :mod:`router.policy`).
    """

    __slots__ = (
        "_cutoffs",
        "_escalation",
        "_fallback",
        "_max_actions",
        "_nba",
        "_routes",
        "_sla",
        "_unknown_tier",
        "calendars",
        "service_prices",
        "spec",
        "version",
    )

    def __init__(self, spec: PolicySpec) -> None:
        self.spec = spec
        self.version: str = spec.version
        calendars: dict[str, Calendar] = {}
        for name, cal in spec.calendars.items():
            public = holidays_of(cal.country, cal.subdivision) if cal.country else None
            calendars[name] = Calendar(name, cal.timezone, cal.hours.week(), cal.holidays, public_holidays=public)
        self.calendars: Mapping[str, Calendar] = MappingProxyType(calendars)

        c = spec.tiers.cutoffs
        self._cutoffs: tuple[tuple[float, Tier], ...] = (
            (c.VIP, "VIP"),
            (c.Premium, "Premium"),
            (c.Standard, "Standard"),
        )
        self._unknown_tier: Tier = spec.tiers.unknown

        self._sla: dict[tuple[str, str], _Sla] = {}
        for tier in TIERS:
            for prio in PRIORITIES:
                t = getattr(getattr(spec.sla, tier), prio)
                self._sla[(tier, prio)] = _Sla(float(t.hours), t.clock, calendars[t.calendar])

        base: dict[str, Escalation] = {tier: _escalation(getattr(spec.escalation, tier)) for tier in TIERS}
        self._escalation: Mapping[str, Escalation] = MappingProxyType(base)

        actions = {code: Action(code=code, label=label) for code, label in spec.actions.items()}
        routes = []
        for rule in spec.routing:
            # Merge the rule's target into each tier's target now, not per request.
            targets = {
                tier: Escalation(
                    queue=rule.queue or esc.queue,
                    role=rule.role or esc.role,
                    skill=rule.skill if rule.skill is not None else esc.skill,
                )
                for tier, esc in base.items()
            }
            routes.append(
                _Route(
                    rule.name,
                    _compile(rule.when),
                    targets,
                    rule.sla_tier,
                    actions[rule.action] if rule.action else None,
                    _Template(rule.reason) if rule.reason else None,
                )
            )
        self._routes: tuple[_Route, ...] = tuple(routes)
        self._nba: tuple[_NbaRule, ...] = tuple(
            _NbaRule(_compile(r.when), actions[r.action], _Template(r.reason) if r.reason else None)
            for r in spec.next_best_action.rules
        )
        self._fallback: Action = actions[spec.next_best_action.fallback]
        self._max_actions: int = spec.next_best_action.max_actions
        self.service_prices = spec.service_cost.prices()
        """Cost-to-serve prices for CLV (``router.core.scoring.assess``)."""

    def __repr__(self) -> str:
        return f"Policy(version={self.version!r})"

    @property
    def standard_action(self) -> Action:
        """The action when no next-best-action rule matches (``next_best_action.fallback``): what the
        control group of the next-best-action gets instead (``router.policy.control``)."""
        return self._fallback

    def tier_for(self, clv_percentile: float) -> Tier:
        """Tier of a CLV percentile according to the cut-offs."""
        for cutoff, tier in self._cutoffs:
            if clv_percentile >= cutoff:
                return tier
        return "Basic"


def _escalation(t: Target) -> Escalation:
    return Escalation(queue=t.queue, role=t.role, skill=t.skill)


def compile_policy(spec: PolicySpec) -> Policy:
    """Build a :class:`Policy` from an already validated spec (tests, API previews)."""
    return Policy(spec)


def load_policy(path: str | Path) -> Policy:
    """Read, validate and precompile a policy file. Pure: no globals are touched.

    Raises :class:`~router.policy.spec.PolicyError` naming the path of the first problem.
    """
    return Policy(read_policy(path))


def policy_from_text(text: str, source: str = "draft") -> Policy:
    """Validate and precompile policy TOML held in memory (a draft or a stored version)."""
    return Policy(parse_policy_text(text, source))


# ----------------------------------------------------------------------------------- decide

_TIER_BY_NAME: dict[str, Tier] = {t: t for t in TIERS}
_PRIORITY_SET: frozenset[str] = frozenset(PRIORITIES)


def decide(policy: Policy, inp: DecisionInput, received_at: datetime) -> PolicyDecision:
    """Decide tier, SLA deadline, escalation target, next-best-actions and reasons.

    ``received_at`` starts the SLA clock (a naive value is taken as UTC). Never raises for
    any input the contract allows: unknown strings simply match no rule, and an unknown
    priority is treated as ``normal``.
    """
    p = policy
    reasons: list[str] = []

    # 1. Tier: a person's override beats everything; then the value table.
    pct = inp.clv_percentile
    if pct is not None and pct != pct:  # NaN: no usable value score
        pct = None
    # An override that is not a tier name is ignored rather than trusted.
    override = _TIER_BY_NAME.get(inp.override_tier) if inp.override_tier is not None else None
    tier: Tier
    if override is not None:
        tier = override
        reasons.append(f"Tier set by a person: {tier}")
    elif not inp.known:
        tier = p._unknown_tier
        reasons.append("Customer not known yet: default service")
    elif pct is None:
        tier = p._unknown_tier
        reasons.append("No value score yet: default service")
    else:
        tier = p.tier_for(pct)

    # 2. Routing: the first matching rule picks the target.
    route = None
    for r in p._routes:
        if r.checks(inp, tier):
            route = r
            break
    if route is not None:
        escalation = route.targets[tier]
        sla_tier: str = route.sla_tier or tier
        if route.reason is not None:
            reasons.append(route.reason.render(inp, tier))
    else:
        escalation = p._escalation[tier]
        sla_tier = tier
    if inp.known and pct is not None:
        top = _top(pct)
        reasons.append(f"Top {top} % customer by value" if top <= 50 else f"Value score {pct:.0f}/100: {tier} service")

    # 3. SLA deadline.
    prio = inp.priority if inp.priority in _PRIORITY_SET else "normal"
    s = p._sla[(sla_tier, prio)]
    if received_at.tzinfo is None:
        received_at = received_at.replace(tzinfo=UTC)
    sla = SlaDeadline(
        due_at=deadline(received_at, s.hours, s.clock, s.calendar),
        target_hours=s.hours,
        clock=s.clock,
        calendar=s.name,
    )

    # 4. Next-best-actions: ordered rules, deduplicated, capped; the route's action first.
    actions: list[Action] = []
    codes: set[str] = set()
    if route is not None and route.action is not None:
        actions.append(route.action)
        codes.add(route.action.code)
    cap = p._max_actions
    for rule in p._nba:
        if len(reasons) >= MAX_REASONS and len(actions) >= cap:
            break
        if not rule.checks(inp, tier):
            continue
        code = rule.action.code
        if code not in codes:
            if len(actions) >= cap:
                continue
            actions.append(rule.action)
            codes.add(code)
        if rule.reason is not None and len(reasons) < MAX_REASONS:
            text = rule.reason.render(inp, tier)
            if text not in reasons:
                reasons.append(text)
    if not actions:
        actions.append(p._fallback)

    return PolicyDecision(tier=tier, sla=sla, escalation=escalation, actions=actions, reasons=reasons[:MAX_REASONS])
