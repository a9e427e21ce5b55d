"""Policy simulation arithmetic, without Redis: tier changes, directions, examples, replayed decisions."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from router.policy import DecisionInput, decide, policy_from_text
from router.serving.decisions import audit_inputs, input_from_audit
from router.serving.simulation import EXAMPLES, _Base, _Replay, sla_changes
from router.state.audit import AuditRecord
from schemas.api import Decision, ScoreCard

TEXT = (Path(__file__).resolve().parents[3] / "router" / "policy" / "default.toml").read_text()
CURRENT = policy_from_text(TEXT)
DRAFT = policy_from_text(
    TEXT.replace("VIP = 90", "VIP = 80").replace('version = "2026-11-25.1"', 'version = "2026-12-01.1"')
)
AT = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def _input(pct: float, **kw: object) -> DecisionInput:
    base: dict[str, object] = dict(
        known=True,
        clv_percentile=pct,
        churn=0.1,
        upsell=0.2,
        advocacy=0.5,
        sentiment=0.0,
        segment="smb",
        channel="email",
        category="general",
        priority="normal",
    )
    base.update(kw)
    return DecisionInput(**base)  # type: ignore[arg-type]


def test_a_lower_vip_cut_off_moves_premium_customers_up_and_keeps_examples() -> None:
    tally = _Base(CURRENT, DRAFT, 1.0)
    for i in range(100):
        tally.add(f"h{i:02d}", _input(i + 0.5), AT)
    report = tally.report()
    assert report.customers == 100
    assert report.tiers_before == {"VIP": 10, "Premium": 20, "Standard": 60, "Basic": 10}
    assert report.tiers_after == {"VIP": 20, "Premium": 10, "Standard": 60, "Basic": 10}
    (move,) = report.transitions
    assert (move.before, move.after, move.count) == ("Premium", "VIP", 10)
    assert move.examples == [f"h{i}" for i in range(80, 80 + EXAMPLES)]
    assert (report.up, report.down) == (10, 0)
    # an e-mail from those ten now goes to the VIP queue on calendar hours
    assert [(p.before, p.after, p.count) for p in report.queues] == [("priority", "vip", 10)]
    assert [(p.before, p.after, p.count) for p in report.targets] == [("8 h business", "2 h calendar", 10)]


def test_an_override_keeps_its_tier_under_any_draft() -> None:
    tally = _Base(CURRENT, DRAFT, 1.0)
    tally.add("h", _input(85.0, override_tier="Basic"), AT)
    report = tally.report()
    assert report.transitions == [] and report.overrides == 1 and report.tiers_after["Basic"] == 1


def test_sla_changes_name_tier_priority_and_both_targets() -> None:
    slower = policy_from_text(TEXT.replace("normal = { hours = 2,   clock", "normal = { hours = 3,   clock"))
    (change,) = sla_changes(CURRENT, slower)
    assert (change.tier, change.priority) == ("VIP", "normal")
    assert (change.before, change.after) == ("2 h calendar (24x7)", "3 h calendar (24x7)")
    assert sla_changes(CURRENT, DRAFT) == []


def _record(inp: DecisionInput, at: datetime, decision_id: str) -> AuditRecord:
    out = decide(CURRENT, inp, at)
    decision = Decision(
        decision_id=decision_id, customer_known=True, tier=out.tier, sla=out.sla, escalation=out.escalation,
        next_best_actions=out.actions, scores=ScoreCard(clv_score=round(inp.clv_percentile or 0, 1),
        churn_risk=round((inp.churn or 0) * 100, 1), upsell=None, advocacy=None, sentiment="neutral",
        last_interaction=None, last_interaction_at=None), reasons=out.reasons, model_version="m", policy_version="p",
    )  # fmt: skip
    return AuditRecord(
        decision_id=decision_id, at=at.timestamp(), customer_key="k", inputs=audit_inputs(inp, decision),
        tier=out.tier, role=out.escalation.role, queue=out.escalation.queue, actions=[], due_at=out.sla.due_at.isoformat(),
        model_version="m", policy_version="p", reasons=out.reasons,
    )  # fmt: skip


def test_an_audited_decision_replays_to_the_same_decision() -> None:
    inp = _input(87.3, category="technical", channel="chat", late_payments_90d=2, open_tickets=4, nps=3, mrr=99.0)
    rec = _record(inp, AT, "d-1")
    assert input_from_audit(rec.inputs, rec.override) == inp
    assert decide(CURRENT, input_from_audit(rec.inputs, None), AT) == decide(CURRENT, inp, AT)


def test_records_written_before_every_input_was_kept_still_replay() -> None:
    old = {"channel": "phone", "category": "billing", "priority": "high", "clv_score": 95.0, "churn_risk": 80.0}
    inp = input_from_audit(old, None)
    assert inp.known and inp.clv_percentile == 95.0 and inp.churn == 0.8 and inp.upsell is None


def test_replay_counts_workload_per_queue_and_hour_and_deadline_moves() -> None:
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC).timestamp()
    replay = _Replay(CURRENT, DRAFT, 2, now)
    for i in range(4):  # two Premium customers who become VIP, two Standard who stay
        replay.add(_record(_input(85.0 if i < 2 else 50.0), AT, f"d-{i}"))
    report = replay.report({"vip": 1.0}, 10.0)
    assert report.decisions == 4 and (report.up, report.down) == (2, 0)
    loads = {q.queue: q for q in report.workload}
    assert loads["vip"].after[10] == 1.0 and loads["vip"].before[10] == 0.0  # 2 contacts over 2 days
    assert loads["priority"].before[10] == 1.0 and loads["vip"].capacity == 1.0 and loads["support"].capacity == 10.0
    (moved,) = report.deadlines
    assert moved.queue == "vip" and moved.earlier == 2 and moved.later == 0 and moved.mean_shift_h < 0
    assert moved.still_open_moved == 0  # their old deadlines (8 business hours after AT) have passed by ``now``


async def test_the_throttle_sleeps_for_cpu_used_not_for_time_spent_waiting() -> None:
    import time

    from router.serving.simulation import Throttle

    throttle = Throttle(0.5)
    time.sleep(0.2)  # noqa: ASYNC251 - waiting (for Redis, for a core, or stopped) without using CPU
    t0 = time.perf_counter()
    await throttle.pause()
    assert time.perf_counter() - t0 < 0.05
    spin = time.process_time()
    while time.process_time() - spin < 0.1:  # 0.1 s of work
        pass
    t0 = time.perf_counter()
    await throttle.pause()
    assert 0.09 <= time.perf_counter() - t0 < 0.3  # as long again: half a core
