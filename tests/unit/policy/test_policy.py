"""The routing policy: the default file, its validation messages and the decisions it makes."""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.policy import (
    DecisionInput,
    Policy,
    PolicyDecision,
    PolicyError,
    compile_policy,
    decide,
    load_policy,
    parse_policy,
)
from router.settings import PolicySettings

DEFAULT = Path(PolicySettings().path)
RAW: dict[str, Any] = tomllib.loads(DEFAULT.read_text())
BERLIN = ZoneInfo("Europe/Berlin")
MONDAY_10 = datetime(2026, 11, 23, 10, tzinfo=BERLIN)
FRIDAY_17 = datetime(2026, 11, 27, 17, tzinfo=BERLIN)


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(DEFAULT)


def customer(**kw: Any) -> DecisionInput:
    """A known, calm mid-value customer; keyword arguments change what a test is about."""
    base: dict[str, Any] = {
        "known": True,
        "clv_percentile": 50.0,
        "churn": 0.1,
        "upsell": 0.1,
        "advocacy": 0.3,
        "sentiment": 0.0,
        "segment": "smb",
        "channel": "ticket",
        "category": "general",
        "priority": "normal",
    }
    base.update(kw)
    return DecisionInput(**base)


def unknown(**kw: Any) -> DecisionInput:
    return customer(known=False, clv_percentile=None, churn=None, upsell=None, advocacy=None, sentiment=None, **kw)


def codes(d: PolicyDecision) -> list[str]:
    return [a.code for a in d.actions]


# ------------------------------------------------------------------------------ the file


def test_default_policy_loads(policy: Policy) -> None:
    assert policy.version == "2026-11-25.1"
    assert {"de_office", "24x7"} <= set(policy.calendars)
    assert policy.calendars["de_office"].tz.key == "Europe/Berlin"
    assert policy.calendars["24x7"].always_open


def test_load_policy_is_pure(policy: Policy) -> None:
    # Hot reload swaps whole objects: two loads share nothing mutable that matters.
    again = load_policy(DEFAULT)
    assert again is not policy
    assert again.version == policy.version
    assert decide(again, customer(), MONDAY_10) == decide(policy, customer(), MONDAY_10)


def mutate(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    raw = copy.deepcopy(RAW)
    change(raw)
    return raw


def _drop_targets(rule: dict[str, Any]) -> None:
    for key in ("queue", "role", "sla_tier", "action"):
        rule.pop(key, None)


INVALID: list[tuple[str, Callable[[dict[str, Any]], object], str]] = [
    (
        "cutoffs-order",
        lambda r: r["tiers"]["cutoffs"].update(VIP=85, Premium=90),
        "tiers.cutoffs: VIP cut-off 85 must be above Premium 90",
    ),
    (
        "cutoffs-order-low",
        lambda r: r["tiers"]["cutoffs"].update(Standard=75),
        "tiers.cutoffs: Premium cut-off 70 must be above Standard 75",
    ),
    (
        "cutoff-range",
        lambda r: r["tiers"]["cutoffs"].update(VIP=101),
        "tiers.cutoffs.VIP: Expected `float` <= 100.0",
    ),
    ("unknown-tier", lambda r: r["tiers"].update(unknown="Gold"), "tiers.unknown: Invalid enum value 'Gold'"),
    (
        "bad-time",
        lambda r: r["calendars"]["de_office"]["hours"].update(mon=["08:00-25:00"]),
        "calendars.de_office.hours.mon: '25:00' is not a time",
    ),
    (
        "bad-interval",
        lambda r: r["calendars"]["de_office"]["hours"].update(tue=["0800"]),
        "calendars.de_office.hours.tue: '0800' is not an interval like '08:00-18:00'",
    ),
    (
        "reversed-interval",
        lambda r: r["calendars"]["de_office"]["hours"].update(wed=["18:00-08:00"]),
        "calendars.de_office.hours.wed: '18:00-08:00': opening must be before closing",
    ),
    (
        "overlap",
        lambda r: r["calendars"]["de_office"]["hours"].update(mon=["08:00-12:30", "12:00-13:00"]),
        "calendars.de_office.hours.mon: '12:00-13:00' overlaps '08:00-12:30'",
    ),
    (
        "unknown-weekday",
        lambda r: r["calendars"]["de_office"]["hours"].update(monday=["08:00-18:00"]),
        "calendars.de_office.hours: Object contains unknown field `monday`",
    ),
    (
        "no-open-hours",
        lambda r: r["calendars"]["de_office"].update(hours={}),
        "calendars.de_office.hours: no open hours in the week",
    ),
    (
        "bad-timezone",
        lambda r: r["calendars"]["de_office"].update(timezone="Europe/Berln"),
        "calendars.de_office.timezone: unknown time zone 'Europe/Berln'",
    ),
    (
        "bad-holiday",
        lambda r: r["calendars"]["de_office"].update(holidays=["Christmas"]),
        "calendars.de_office.holidays[0]: Invalid RFC3339 encoded date",
    ),
    (
        "unknown-country",
        lambda r: r["calendars"]["de_office"].update(country="XX", subdivision=None),
        "calendars.de_office.country: unknown country 'XX': give an ISO 3166-1 alpha-2 code the holidays "
        "package knows (e.g. 'DE', 'AT', 'US')",
    ),
    (
        "unknown-subdivision",
        lambda r: r["calendars"]["de_office"].update(subdivision="BER"),
        "calendars.de_office.subdivision: 'BER' is not a subdivision of DE (known: BB, BE, BW, BY, HB, HE, "
        "HH, MV, NI, NW, RP, SH, SL, SN, ST, TH, Augsburg)",
    ),
    (
        "subdivision-without-country",
        lambda r: r["calendars"]["de_office"].pop("country"),
        "calendars.de_office.subdivision: needs a country",
    ),
    (
        "sla-unknown-calendar",
        lambda r: r["sla"]["Premium"]["normal"].update(calendar="us_office"),
        "sla.Premium.normal.calendar: unknown calendar 'us_office' (known: 24x7, de_office)",
    ),
    (
        "sla-zero-hours",
        lambda r: r["sla"]["VIP"]["normal"].update(hours=0),
        "sla.VIP.normal.hours: Expected `float` > 0.0",
    ),
    (
        "sla-bad-clock",
        lambda r: r["sla"]["VIP"]["high"].update(clock="wall"),
        "sla.VIP.high.clock: Invalid enum value 'wall'",
    ),
    (
        "sla-missing-priority",
        lambda r: r["sla"]["Basic"].pop("urgent"),
        "sla.Basic: Object missing required field `urgent`",
    ),
    (
        "escalation-empty-queue",
        lambda r: r["escalation"]["VIP"].update(queue=""),
        "escalation.VIP.queue: Expected `str` of length >= 1",
    ),
    (
        "action-empty-label",
        lambda r: r["actions"].update(retention_offer=""),
        "actions.retention_offer: Expected `str` of length >= 1",
    ),
    (
        "routing-unknown-action",
        lambda r: r["routing"][0].update(action="free_beer"),
        "routing[0].action: unknown action 'free_beer' (known: apologise_expedite, ask_referral, "
        "fix_root_cause, resolve_billing_first, retention_offer, standard_service, upsell_opportunity)",
    ),
    (
        "routing-duplicate-name",
        lambda r: r["routing"][1].update(name="risk_override"),
        "routing[1].name: duplicate rule name 'risk_override'",
    ),
    (
        "routing-does-nothing",
        lambda r: _drop_targets(r["routing"][0]),
        "routing[0]: rule changes nothing: set queue, role, skill, sla_tier or action",
    ),
    (
        "condition-min-above-max",
        lambda r: r["routing"][0]["when"].update(max_churn=0.5),
        "routing[0].when: min_churn 0.7 is above max_churn 0.5: the rule can never match",
    ),
    (
        "condition-typo",
        lambda r: r["routing"][0]["when"].update(min_churm=0.5),
        "routing[0].when: Object contains unknown field `min_churm`",
    ),
    (
        "condition-range",
        lambda r: r["routing"][0]["when"].update(min_churn=70),
        "routing[0].when.min_churn: Expected `float` <= 1.0",
    ),
    (
        "condition-unknown-category",
        lambda r: r["routing"][1]["when"].update(categories=["hardware"]),
        "routing[1].when.categories[0]: Invalid enum value 'hardware'",
    ),
    (
        "condition-empty-list",
        lambda r: r["routing"][1]["when"].update(tiers=[]),
        "routing[1].when.tiers: empty list: the rule can never match (leave it out to match all)",
    ),
    (
        "reason-placeholder",
        lambda r: r["next_best_action"]["rules"][0].update(reason="Churn {churn}"),
        "next_best_action.rules[0].reason: unknown placeholder {churn} (known: advocacy_pct, category, "
        "channel, churn_pct, clv_percentile, clv_top, days_since_last_interaction, late_payments, mrr, nps, "
        "open_tickets, priority, segment, sentiment, support_cost, tier, upsell_pct)",
    ),
    (
        "reason-format-spec",
        lambda r: r["next_best_action"]["rules"][0].update(reason="Churn {churn_pct:.1f}"),
        "next_best_action.rules[0].reason: placeholder {churn_pct} takes no format; values come pre-formatted",
    ),
    (
        "nba-unknown-action",
        lambda r: r["next_best_action"]["rules"][2].update(action="free_beer"),
        "next_best_action.rules[2].action: unknown action 'free_beer' (known: apologise_expedite, "
        "ask_referral, fix_root_cause, resolve_billing_first, retention_offer, standard_service, upsell_opportunity)",
    ),
    (
        "nba-max-actions",
        lambda r: r["next_best_action"].update(max_actions=4),
        "next_best_action.max_actions: Expected `int` <= 3",
    ),
    (
        "bad-version",
        lambda r: r.update(version="v1"),
        "version: 'v1' must look like YYYY-MM-DD.N (e.g. '2026-11-25.1')",
    ),
    ("missing-version", lambda r: r.pop("version"), "top level: Object missing required field `version`"),
    ("unknown-section", lambda r: r.update(routng=[]), "top level: Object contains unknown field `routng`"),
]


@pytest.mark.parametrize(("change", "message"), [(c, m) for _, c, m in INVALID], ids=[i for i, _, _ in INVALID])
def test_invalid_policy_names_path_and_problem(change: Callable[[dict[str, Any]], object], message: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(mutate(change))
    assert str(info.value) == message


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text('version = "2026-11-25.1"\n[tiers\n')
    with pytest.raises(PolicyError, match=r"bad\.toml: not valid TOML"):
        load_policy(bad)


# --------------------------------------------------------------------------------- tiers


@pytest.mark.parametrize(
    ("pct", "tier"),
    [(100, "VIP"), (90, "VIP"), (89.9, "Premium"), (70, "Premium"), (69.9, "Standard"), (10, "Standard"),
     (9.9, "Basic"), (0, "Basic")],
)  # fmt: skip
def test_tier_cutoffs(policy: Policy, pct: float, tier: str) -> None:
    assert policy.tier_for(pct) == tier
    assert decide(policy, customer(clv_percentile=pct), MONDAY_10).tier == tier


def test_service_matrix_first_response(policy: Policy) -> None:
    # Normal priority, Monday 10:00 Berlin: VIP 2 calendar hours, Premium 8 business hours
    # (same day 18:00), Standard 24 (Wednesday 14:00), Basic 48 (Friday 18:00).
    due = {pct: decide(policy, customer(clv_percentile=pct), MONDAY_10).sla for pct in (95, 80, 50, 5)}
    assert due[95].due_at == datetime(2026, 11, 23, 12, tzinfo=BERLIN)
    assert (due[95].clock, due[95].calendar, due[95].target_hours) == ("calendar", "24x7", 2.0)
    assert due[80].due_at == datetime(2026, 11, 23, 18, tzinfo=BERLIN)
    assert (due[80].clock, due[80].calendar) == ("business_hours", "de_office")
    assert due[50].due_at == datetime(2026, 11, 25, 14, tzinfo=BERLIN)
    assert due[5].due_at == datetime(2026, 11, 27, 18, tzinfo=BERLIN)
    assert all(d.due_at.tzinfo is UTC for d in due.values())


def test_business_hours_sla_waits_for_monday(policy: Policy) -> None:
    sla = decide(policy, customer(clv_percentile=80), FRIDAY_17).sla
    assert sla.due_at == datetime(2026, 11, 30, 15, tzinfo=BERLIN)  # 1 h Friday + 7 h Monday


def test_urgent_shortens_and_runs_on_calendar_hours(policy: Policy) -> None:
    normal = decide(policy, customer(), FRIDAY_17).sla
    urgent = decide(policy, customer(priority="urgent"), FRIDAY_17).sla
    low = decide(policy, customer(priority="low"), FRIDAY_17).sla
    assert urgent.clock == "calendar"
    assert urgent.due_at == datetime(2026, 11, 27, 21, tzinfo=BERLIN)
    assert urgent.due_at < normal.due_at < low.due_at


def test_unknown_priority_is_treated_as_normal(policy: Policy) -> None:
    assert decide(policy, customer(priority="whenever"), MONDAY_10).sla == decide(policy, customer(), MONDAY_10).sla


def test_tier_escalation_targets(policy: Policy) -> None:
    targets = {pct: decide(policy, customer(clv_percentile=pct), MONDAY_10).escalation for pct in (95, 80, 50, 5)}
    assert targets[95].role == "senior_advisor"
    assert targets[80].role == "experienced_agent"
    assert (targets[50].queue, targets[50].role) == ("support", "agent")
    assert targets[5].role == "bot"


# ------------------------------------------------------------------------- routing rules


def test_vip_technical_goes_to_senior_technician(policy: Policy) -> None:
    d = decide(policy, customer(clv_percentile=95, category="technical", channel="chat"), MONDAY_10)
    assert (d.escalation.role, d.escalation.skill) == ("senior_technician", "technical")
    assert d.reasons[0] == "Technical issue from a VIP: straight to a senior technician"
    assert d.reasons[1] == "Top 5 % customer by value"


def test_standard_technical_on_chat_meets_the_bot_first(policy: Policy) -> None:
    d = decide(policy, customer(clv_percentile=50, category="technical", channel="chat"), MONDAY_10)
    assert (d.escalation.queue, d.escalation.role) == ("chatbot", "bot")
    assert "bot tries first" in d.reasons[0]
    # On a ticket the same problem goes to a person with the technical skill.
    t = decide(policy, customer(clv_percentile=50, category="technical", channel="ticket"), MONDAY_10)
    assert (t.escalation.queue, t.escalation.role, t.escalation.skill) == ("support", "agent", "technical")
    # A Premium customer on chat is not sent to the bot.
    p = decide(policy, customer(clv_percentile=80, category="technical", channel="chat"), MONDAY_10)
    assert p.escalation.role == "experienced_agent"


def test_high_value_and_high_churn_override_the_tier_table(policy: Policy) -> None:
    d = decide(policy, customer(clv_percentile=75, churn=0.78, category="general"), FRIDAY_17)
    assert d.tier == "Premium"  # the value tier is still reported
    assert (d.escalation.queue, d.escalation.role) == ("retention", "senior_advisor")
    assert codes(d)[0] == "retention_offer"
    # Answered within the VIP target, not the Premium one.
    assert (d.sla.target_hours, d.sla.clock) == (2.0, "calendar")
    assert d.reasons[0] == "Valuable customer at risk of leaving (churn risk 78 %): senior advisor"
    assert "Churn risk high (78 %)" in d.reasons
    # It beats even the VIP technical rule: keeping the customer comes first.
    v = decide(policy, customer(clv_percentile=95, churn=0.9, category="technical"), FRIDAY_17)
    assert v.escalation.role == "senior_advisor"


def test_high_churn_alone_gives_retention_action_but_normal_route(policy: Policy) -> None:
    d = decide(policy, customer(clv_percentile=40, churn=0.8), MONDAY_10)
    assert (d.escalation.queue, d.escalation.role) == ("support", "agent")
    assert codes(d)[0] == "retention_offer"


def test_cancellation_from_a_valuable_customer_goes_to_retention_desk(policy: Policy) -> None:
    d = decide(policy, customer(clv_percentile=60, category="cancellation"), MONDAY_10)
    assert (d.escalation.queue, d.escalation.role) == ("retention", "retention_specialist")
    assert codes(d)[0] == "retention_offer"
    low = decide(policy, customer(clv_percentile=20, category="cancellation"), MONDAY_10)
    assert low.escalation.queue == "support"


def test_billing_goes_to_billing_queue_with_the_tier_role(policy: Policy) -> None:
    d = decide(policy, customer(clv_percentile=80, category="billing", late_payments_90d=2), MONDAY_10)
    assert (d.escalation.queue, d.escalation.role, d.escalation.skill) == (
        "billing",
        "experienced_agent",
        "billing",
    )
    assert codes(d)[0] == "resolve_billing_first"
    assert "Late payments in the last 90 days: 2" in d.reasons


# ------------------------------------------------------------------- who, and why


def test_unknown_customer_gets_the_default_service(policy: Policy) -> None:
    d = decide(policy, unknown(), MONDAY_10)
    assert d.tier == "Standard"
    assert d.reasons == ["Customer not known yet: default service"]
    assert (d.escalation.queue, d.escalation.role) == ("support", "agent")
    assert codes(d) == ["standard_service"]
    assert d.sla.target_hours == 24.0


def test_known_customer_without_value_score_gets_default_tier(policy: Policy) -> None:
    d = decide(policy, customer(clv_percentile=None), MONDAY_10)
    assert d.tier == "Standard"
    assert d.reasons[0] == "No value score yet: default service"


def test_override_tier_is_honoured(policy: Policy) -> None:
    d = decide(policy, customer(clv_percentile=20, override_tier="VIP"), MONDAY_10)
    assert d.tier == "VIP"
    assert d.escalation.role == "senior_advisor"
    assert d.sla.target_hours == 2.0
    assert d.reasons[0] == "Tier set by a person: VIP"
    # An override also applies to customers the service does not know yet.
    assert decide(policy, unknown(override_tier="Premium"), MONDAY_10).tier == "Premium"
    # Garbage is ignored rather than trusted.
    assert decide(policy, customer(clv_percentile=20, override_tier="Gold"), MONDAY_10).tier == "Standard"


def test_example_agent_card(policy: Policy) -> None:
    # DOMAIN.md: CLV 85 (top 15 %), churn low (12 %), sentiment neutral, positive review
    # -> recommendation: standard service, upsell opportunity.
    d = decide(policy, customer(clv_percentile=85, churn=0.12, sentiment=0.0, upsell=0.7), MONDAY_10)
    assert codes(d)[:2] == ["standard_service", "upsell_opportunity"]
    assert d.reasons[0] == "Top 15 % customer by value"


def test_unhappy_customer_gets_apology_once(policy: Policy) -> None:
    d = decide(policy, customer(sentiment=-0.6, open_tickets=4, nps=3), MONDAY_10)
    assert codes(d) == ["apologise_expedite"]  # three matching rules, one action
    assert d.reasons[1:] == ["Negative tone in recent contacts", "4 tickets still open"]


def test_promoter_is_asked_for_a_referral(policy: Policy) -> None:
    d = decide(policy, customer(advocacy=0.85, sentiment=0.5, nps=10), MONDAY_10)
    assert "ask_referral" in codes(d)
    assert "Likely to recommend us (85 %)" in d.reasons


def test_everything_at_once_is_capped_at_three(policy: Policy) -> None:
    d = decide(
        policy,
        customer(
            clv_percentile=99, churn=0.95, sentiment=-0.9, late_payments_90d=3, open_tickets=9, nps=0,
            category="cancellation",
        ),
        MONDAY_10,
    )  # fmt: skip
    assert codes(d) == ["retention_offer", "resolve_billing_first", "apologise_expedite"]
    assert len(d.reasons) == 3


def test_policy_is_data_lunch_break_calendar() -> None:
    # Operations change the file, not the code: a calendar with a lunch break.
    raw = mutate(lambda r: r["calendars"]["de_office"]["hours"].update(mon=["08:00-12:00", "13:00-18:00"]))
    p = compile_policy(parse_policy(raw))
    d = decide(p, customer(clv_percentile=80, priority="high"), MONDAY_10)  # Premium high: 4 h
    assert d.sla.due_at == datetime(2026, 11, 23, 15, tzinfo=BERLIN)


def test_naive_received_at_is_utc(policy: Policy) -> None:
    naive = decide(policy, customer(), datetime(2026, 11, 23, 9))
    aware = decide(policy, customer(), datetime(2026, 11, 23, 9, tzinfo=UTC))
    assert naive == aware


# ------------------------------------------------------------------------------ property

SCORE = st.none() | st.floats(min_value=0, max_value=1)
INPUTS = st.builds(
    DecisionInput,
    known=st.booleans(),
    clv_percentile=st.none() | st.floats(min_value=0, max_value=100),
    churn=SCORE,
    upsell=SCORE,
    advocacy=SCORE,
    sentiment=st.none() | st.floats(min_value=-1, max_value=1),
    segment=st.sampled_from(["consumer", "smb", "mid_market", "enterprise", ""]),
    channel=st.sampled_from(["ticket", "email", "phone", "chat", "web", "social", "fax"]),
    category=st.sampled_from(["technical", "billing", "account", "cancellation", "sales", "general", "?"]),
    priority=st.sampled_from(["low", "normal", "high", "urgent", "asap"]),
    open_tickets=st.integers(min_value=0, max_value=50),
    late_payments_90d=st.integers(min_value=0, max_value=20),
    nps=st.none() | st.integers(min_value=0, max_value=10),
    subscription_active=st.booleans(),
    mrr=st.floats(min_value=0, max_value=1e6),
    days_since_last_interaction=st.none() | st.floats(min_value=0, max_value=3650),
    override_tier=st.none() | st.sampled_from(["VIP", "Premium", "Standard", "Basic", "Gold"]),
)
RECEIVED = st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC))


@settings(max_examples=500)
@given(inp=INPUTS, received_at=RECEIVED)
def test_decide_never_raises_and_is_always_valid(policy: Policy, inp: DecisionInput, received_at: datetime) -> None:
    d = decide(policy, inp, received_at)
    assert d.tier in ("VIP", "Premium", "Standard", "Basic")
    assert 1 <= len(d.actions) <= 3
    assert len({a.code for a in d.actions}) == len(d.actions)
    assert all(a.label for a in d.actions)
    # Every decision explains itself (value, unknown customer or override), in at most three facts.
    assert 1 <= len(d.reasons) <= 3
    assert all(r and "{" not in r for r in d.reasons)
    assert len(set(d.reasons)) == len(d.reasons)
    assert d.sla.due_at >= received_at and d.sla.due_at.tzinfo is UTC
    assert d.escalation.queue and d.escalation.role
    # The decision serialises to the wire contract.
    msgspec.json.decode(msgspec.json.encode(d), type=PolicyDecision)


WILD = st.none() | st.floats(allow_nan=True, allow_infinity=True)


@settings(max_examples=300)
@given(
    inp=st.builds(
        DecisionInput,
        known=st.booleans(),
        clv_percentile=WILD,
        churn=WILD,
        upsell=WILD,
        advocacy=WILD,
        sentiment=WILD,
        segment=st.text(max_size=5),
        channel=st.text(max_size=5),
        category=st.text(max_size=5),
        priority=st.text(max_size=5),
        open_tickets=st.integers(),
        late_payments_90d=st.integers(),
        nps=st.none() | st.integers(),
        mrr=st.floats(allow_nan=True),
        days_since_last_interaction=WILD,
        override_tier=st.none() | st.text(max_size=8),
    ),
    received_at=RECEIVED,
)
def test_decide_survives_out_of_contract_numbers(policy: Policy, inp: DecisionInput, received_at: datetime) -> None:
    # Upstream bugs (NaN scores, negative counts) must degrade the answer, not fail the request.
    d = decide(policy, inp, received_at)
    assert 1 <= len(d.actions) <= 3 and 1 <= len(d.reasons) <= 3
