"""What a draft policy would change, before anyone switches it on.

Two views, both computed with the code that decides live (:func:`router.policy.decide`,
:func:`router.core.scoring.assess`, the same policy input as a classify call):

* **The customer base**: every snapshot in Redis (or a uniform sample), streamed chunk by
  chunk (:meth:`StateStore.scan_customers`): scores as a decision would compute them now,
  then tier, queue and first-response target of a representative contact (a normal-priority
  general question by e-mail) under the policy in force and under the draft.
* **Recent decisions**: every decision audited in the last N days, replayed from its recorded
  inputs under both policies: tier changes, deadlines that would move, and the contacts per
  queue and hour of day against a capacity the caller gives.

Keeping live traffic unharmed is the caller's side of it: the console runs this in a separate,
SCHED_IDLE process (``router policy simulate``) with its own Redis client, SCAN and pipelined HMGETs
(no script holds Redis), and :class:`Throttle` sleeps between chunks so the simulation takes a
bounded share of one core.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime

import msgspec
import numpy as np

from router.churn.model import ChurnModel
from router.core.features import features
from router.core.scoring import ClvDistribution, assess
from router.policy import DecisionInput, Policy, PolicyDecision, decide
from router.policy.spec import PRIORITIES, TIERS
from router.serving.decisions import input_from_audit, policy_input, stored_score_exact
from router.settings import ModelSettings
from router.state.audit import AuditReader, AuditRecord
from router.state.records import decode_scores, decode_snapshot
from router.state.store import StateStore
from schemas.api import ClassifyRequest, CustomerRef

__all__ = [
    "EXAMPLES",
    "REPRESENTATIVE_CONTACT",
    "BaseReport",
    "PairCount",
    "Progress",
    "QueueLoad",
    "ReplayReport",
    "SimulationReport",
    "SlaChange",
    "Throttle",
    "Transition",
    "simulate",
    "sla_changes",
]

EXAMPLES = 10
"""Example customers (or decisions) kept per tier change, by id only."""
REPRESENTATIVE_CONTACT = ClassifyRequest(
    customer=CustomerRef(customer_id="-"), channel="email", category="general", priority="normal"
)
"""The contact each customer of the base is imagined to make: queue and target follow from it."""
_RANK: dict[str, int] = {t: i for i, t in enumerate(TIERS)}


class Transition(msgspec.Struct, frozen=True):
    before: str
    after: str
    count: int
    examples: list[str]
    """Keyed hashes of customers (the base) or decision ids (replay); the console shows ids."""


class PairCount(msgspec.Struct, frozen=True):
    before: str
    after: str
    count: int


class SlaChange(msgspec.Struct, frozen=True):
    """A first-response target the draft changes (tier and priority)."""

    tier: str
    priority: str
    before: str
    after: str


class QueueLoad(msgspec.Struct, frozen=True):
    """Contacts per hour of day (UTC) for one queue, averaged over the replayed days."""

    queue: str
    before: list[float]
    after: list[float]
    capacity: float | None
    """Contacts per hour the queue can answer (given by the caller), None if not given."""


class BaseReport(msgspec.Struct, frozen=True):
    customers: int
    """Customers simulated (after sampling; erased ones not counted)."""
    sample: float
    overrides: int
    """Customers whose tier a person set: the same before and after."""
    tiers_before: dict[str, int]
    tiers_after: dict[str, int]
    transitions: list[Transition]
    up: int
    """Customers who would get a better tier."""
    down: int
    queues: list[PairCount]
    """Representative contact: queue before -> after, where it changes."""
    targets: list[PairCount]
    """Representative contact: first-response target before -> after (e.g. "8 h business"), where it changes."""


class DeadlineMove(msgspec.Struct, frozen=True):
    queue: str
    """Queue under the draft."""
    earlier: int
    later: int
    still_open_moved: int
    """Of those, deadlines still ahead of now (answered tickets are not known here)."""
    mean_shift_h: float
    """Mean shift of the moved deadlines in hours (negative: earlier)."""


class ReplayReport(msgspec.Struct, frozen=True):
    days: int
    decisions: int
    tiers_before: dict[str, int]
    tiers_after: dict[str, int]
    transitions: list[Transition]
    up: int
    down: int
    deadlines: list[DeadlineMove]
    workload: list[QueueLoad]


class SimulationReport(msgspec.Struct, frozen=True):
    current_version: str
    draft_version: str
    at: float
    took_s: float
    sla_changes: list[SlaChange]
    base: BaseReport
    decisions: ReplayReport


Progress = Callable[[str, int, int | None], Awaitable[None]]
"""``progress(phase, done, total)``: called after every chunk (phase "customers" or "decisions")."""


class Throttle:
    """Sleeps after each chunk so the work takes at most ``share`` of one core (1.0: no sleeping).

    Counts the process's CPU time, not the wall clock: time spent waiting for Redis or for a
    core (the scheduler prefers live traffic) is not work, and must not buy a longer sleep.
    """

    def __init__(self, share: float) -> None:
        self.share = min(1.0, max(0.05, share))
        self._since = time.process_time()

    async def pause(self) -> None:
        busy = time.process_time() - self._since
        await asyncio.sleep(busy * (1.0 / self.share - 1.0))
        self._since = time.process_time()


# -- pure tallies ---------------------------------------------------------------------------------


class _Tiers:
    def __init__(self) -> None:
        self.before: dict[str, int] = {t: 0 for t in TIERS}
        self.after: dict[str, int] = {t: 0 for t in TIERS}
        self.moves: dict[tuple[str, str], list[str]] = {}
        self.counts: dict[tuple[str, str], int] = {}
        self.up = self.down = 0

    def add(self, before: str, after: str, example: str) -> None:
        self.before[before] += 1
        self.after[after] += 1
        if before == after:
            return
        pair = (before, after)
        self.counts[pair] = self.counts.get(pair, 0) + 1
        kept = self.moves.setdefault(pair, [])
        if len(kept) < EXAMPLES:
            kept.append(example)
        if _RANK[after] < _RANK[before]:
            self.up += 1
        else:
            self.down += 1

    def transitions(self) -> list[Transition]:
        return [
            Transition(b, a, n, self.moves[(b, a)])
            for (b, a), n in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        ]


def _pairs(counts: dict[tuple[str, str], int]) -> list[PairCount]:
    return [PairCount(b, a, n) for (b, a), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def _target(d: PolicyDecision) -> str:
    clock = "business" if d.sla.clock == "business_hours" else "calendar"
    return f"{d.sla.target_hours:g} h {clock}"


def sla_changes(current: Policy, draft: Policy) -> list[SlaChange]:
    """First-response targets (tier x priority) that differ between the two policies."""
    out = []
    for tier in TIERS:
        for prio in PRIORITIES:
            a = getattr(getattr(current.spec.sla, tier), prio)
            b = getattr(getattr(draft.spec.sla, tier), prio)
            if a != b:
                out.append(SlaChange(tier, prio, _describe(a), _describe(b)))
    return out


def _describe(t: object) -> str:
    hours, clock, calendar = (getattr(t, name) for name in ("hours", "clock", "calendar"))
    return f"{hours:g} h {'business' if clock == 'business_hours' else 'calendar'} ({calendar})"


# -- the customer base ------------------------------------------------------------------------------


class _Base:
    """Tallies of the customer base under both policies."""

    def __init__(self, current: Policy, draft: Policy, sample: float) -> None:
        self.current, self.draft, self.sample = current, draft, sample
        self.tiers = _Tiers()
        self.queues: dict[tuple[str, str], int] = {}
        self.targets: dict[tuple[str, str], int] = {}
        self.overrides = 0

    def add(self, h: str, inp: DecisionInput, at: datetime, inp_after: DecisionInput | None = None) -> None:
        """One customer; ``inp_after`` when the draft's cost-to-serve prices change the scores."""
        before = decide(self.current, inp, at)
        after = decide(self.draft, inp_after or inp, at)
        self.tiers.add(before.tier, after.tier, h)
        if inp.override_tier is not None:
            self.overrides += 1
        if before.escalation.queue != after.escalation.queue:
            pair = (before.escalation.queue, after.escalation.queue)
            self.queues[pair] = self.queues.get(pair, 0) + 1
        tb, ta = _target(before), _target(after)
        if tb != ta:
            self.targets[(tb, ta)] = self.targets.get((tb, ta), 0) + 1

    def report(self) -> BaseReport:
        t = self.tiers
        return BaseReport(
            customers=sum(t.before.values()), sample=self.sample, overrides=self.overrides,
            tiers_before=t.before, tiers_after=t.after, transitions=t.transitions(), up=t.up, down=t.down,
            queues=_pairs(self.queues), targets=_pairs(self.targets),
        )  # fmt: skip


async def _simulate_base(
    store: StateStore,
    model: ChurnModel | None,
    scoring: ModelSettings,
    tally: _Base,
    *,
    now: float,
    throttle: Throttle,
    progress: Progress,
    chunk: int,
) -> None:
    distribution = ClvDistribution(await store.histogram())
    overrides = await store.scan_overrides()
    # A draft with other cost-to-serve prices changes every CLV: its scores are computed with them and
    # placed in today's distribution (the population's distribution under the draft is not known yet).
    current_prices, draft_prices = tally.current.service_prices, tally.draft.service_prices
    price_sets = [current_prices] if draft_prices == current_prices else [current_prices, draft_prices]
    total = distribution.total or None
    as_of, at = int(now), datetime.fromtimestamp(now, UTC)
    done = 0
    async for rows in store.scan_customers(chunk=chunk, sample=tally.sample):
        live = []
        for h, raw_snap, raw_scores in rows:
            snap = decode_snapshot(raw_snap)
            if snap.customer_id:  # "" is an erased customer's tombstone
                live.append((h, snap, features(snap, as_of), decode_scores(raw_scores)))
        # Churn as a decision gets it: the consumer's score while it is exact, else the model (batched).
        churn: list[float | None] = []
        for _, _, _, stored in live:
            if model is None:
                churn.append(stored.churn if stored else None)
            else:
                churn.append(stored.churn if stored is not None and stored_score_exact(stored, model, as_of) else None)
        missing = [i for i, c in enumerate(churn) if c is None]
        if model is not None and missing:
            predicted = model.predict(np.asarray([live[i][2] for i in missing], dtype=np.float32)).tolist()
            for i, p in zip(missing, predicted, strict=True):
                churn[i] = p
        for (h, snap, row, _), p in zip(live, churn, strict=True):
            override = overrides.get(h)
            inputs = []
            for prices in price_sets:
                scores = assess(snap, row, p, scoring, prices)
                pct = distribution.percentile(scores.clv.value)
                inputs.append(
                    policy_input(REPRESENTATIVE_CONTACT, snap, row, scores, p, pct, scores.sentiment, override)
                )
            tally.add(h, inputs[0], at, inputs[-1] if len(inputs) > 1 else None)
        done += len(rows)
        await progress("customers", done, total)
        await throttle.pause()


# -- recent decisions -------------------------------------------------------------------------------


class _Replay:
    def __init__(self, current: Policy, draft: Policy, days: int, now: float) -> None:
        self.current, self.draft, self.days, self.now = current, draft, days, now
        self.tiers = _Tiers()
        self.hours_before: dict[str, list[int]] = {}
        self.hours_after: dict[str, list[int]] = {}
        self.moved: dict[str, list[float]] = {}
        self.open_moved: dict[str, int] = {}

    def add(self, rec: AuditRecord) -> None:
        inp = input_from_audit(rec.inputs, rec.override)
        at = datetime.fromtimestamp(rec.at, UTC)
        before, after = decide(self.current, inp, at), decide(self.draft, inp, at)
        self.tiers.add(before.tier, after.tier, rec.decision_id)
        hour = at.hour
        self.hours_before.setdefault(before.escalation.queue, [0] * 24)[hour] += 1
        self.hours_after.setdefault(after.escalation.queue, [0] * 24)[hour] += 1
        shift = (after.sla.due_at - before.sla.due_at).total_seconds()
        if abs(shift) >= 1.0:
            queue = after.escalation.queue
            self.moved.setdefault(queue, []).append(shift / 3600.0)
            if before.sla.due_at.timestamp() > self.now:
                self.open_moved[queue] = self.open_moved.get(queue, 0) + 1

    def report(self, capacity: dict[str, float], default_capacity: float | None) -> ReplayReport:
        t = self.tiers
        queues = sorted(set(self.hours_before) | set(self.hours_after))
        zero = [0] * 24
        workload = [
            QueueLoad(
                queue=q,
                before=[round(n / self.days, 2) for n in self.hours_before.get(q, zero)],
                after=[round(n / self.days, 2) for n in self.hours_after.get(q, zero)],
                capacity=capacity.get(q, default_capacity),
            )
            for q in queues
        ]
        deadlines = [
            DeadlineMove(
                queue=q,
                earlier=sum(1 for s in shifts if s < 0),
                later=sum(1 for s in shifts if s > 0),
                still_open_moved=self.open_moved.get(q, 0),
                mean_shift_h=round(sum(shifts) / len(shifts), 2),
            )
            for q, shifts in sorted(self.moved.items())
        ]
        return ReplayReport(
            days=self.days, decisions=sum(t.before.values()), tiers_before=t.before, tiers_after=t.after,
            transitions=t.transitions(), up=t.up, down=t.down, deadlines=deadlines, workload=workload,
        )  # fmt: skip


async def _replay(reader: AuditReader, tally: _Replay, *, throttle: Throttle, progress: Progress, chunk: int) -> None:
    done = 0
    async for rec in reader.between(tally.now - tally.days * 86_400, tally.now, chunk=chunk):
        if isinstance(rec, AuditRecord):
            tally.add(rec)
            done += 1
            if done % chunk == 0:
                await progress("decisions", done, None)
                await throttle.pause()
    await progress("decisions", done, done)


# -- both -------------------------------------------------------------------------------------------


async def _no_progress(phase: str, done: int, total: int | None) -> None:
    return None


async def simulate(
    store: StateStore,
    reader: AuditReader,
    model: ChurnModel | None,
    scoring: ModelSettings,
    current: Policy,
    draft: Policy,
    *,
    days: int = 7,
    sample: float = 1.0,
    capacity: dict[str, float] | None = None,
    default_capacity: float | None = None,
    cpu_share: float = 1.0,
    chunk: int = 500,
    progress: Progress = _no_progress,
) -> SimulationReport:
    """Simulate ``draft`` against ``current`` over the customer base and the last ``days`` of decisions."""
    started = time.time()
    t0 = time.perf_counter()
    throttle = Throttle(cpu_share)
    base = _Base(current, draft, sample)
    await _simulate_base(store, model, scoring, base, now=started, throttle=throttle, progress=progress, chunk=chunk)
    replay = _Replay(current, draft, days, started)
    await _replay(reader, replay, throttle=throttle, progress=progress, chunk=chunk * 2)
    return SimulationReport(
        current_version=current.version,
        draft_version=draft.version,
        at=started,
        took_s=round(time.perf_counter() - t0, 2),
        sla_changes=sla_changes(current, draft),
        base=base.report(),
        decisions=replay.report(capacity or {}, default_capacity),
    )


def example_hashes(report: SimulationReport) -> Iterable[str]:
    """The keyed hashes of the base's example customers (to be shown as ids)."""
    for t in report.base.transitions:
        yield from t.examples


def _share(n: int, total: int) -> str:
    return f"{100.0 * n / total:.1f} %" if total else "-"


def format_report(report: SimulationReport, ids: dict[str, str]) -> str:
    """The report as text for a terminal (``router policy simulate``); examples by customer id."""
    b, d = report.base, report.decisions
    lines = [
        f"draft {report.draft_version} against {report.current_version} in force ({report.took_s:g} s)",
        "",
        f"customer base: {b.customers:,} customers" + (f" (sample {b.sample:g})" if b.sample < 1 else "")
        + f", {b.overrides} with a person's override",
        "  tier        before             after",
    ]  # fmt: skip
    for t in TIERS:
        lines.append(
            f"  {t:<10} {b.tiers_before[t]:>8,} {_share(b.tiers_before[t], b.customers):>8}"
            f"  {b.tiers_after[t]:>8,} {_share(b.tiers_after[t], b.customers):>8}"
        )
    lines.append(f"  {b.up:,} customers move up a tier, {b.down:,} down")
    for tr in b.transitions:
        shown = ", ".join(ids.get(h, "(erased)") for h in tr.examples)
        lines.append(f"  {tr.before} -> {tr.after}: {tr.count:,}  e.g. {shown}")
    for pc in b.targets:
        lines.append(f"  first-response target {pc.before} -> {pc.after}: {pc.count:,} customers")
    for pc in b.queues:
        lines.append(f"  queue {pc.before} -> {pc.after}: {pc.count:,} customers")
    for sc in report.sla_changes:
        lines.append(f"  SLA {sc.tier}/{sc.priority}: {sc.before} -> {sc.after}")
    lines += ["", f"decisions of the last {d.days} days: {d.decisions:,} replayed"]
    lines.append(f"  {d.up:,} would get a better tier, {d.down:,} a worse one")
    for tr in d.transitions:
        lines.append(f"  {tr.before} -> {tr.after}: {tr.count:,}  e.g. {', '.join(tr.examples[:3])}")
    for dm in d.deadlines:
        lines.append(
            f"  deadlines in {dm.queue}: {dm.earlier:,} earlier, {dm.later:,} later "
            f"(mean {dm.mean_shift_h:+g} h; {dm.still_open_moved:,} still ahead)"
        )
    for q in d.workload:
        peak_b, peak_a = max(q.before), max(q.after)
        cap = f", capacity {q.capacity:g}/h" if q.capacity is not None else ""
        over = sum(1 for x in q.after if q.capacity is not None and x > q.capacity)
        lines.append(
            f"  queue {q.queue}: peak {peak_b:g} -> {peak_a:g} contacts/h{cap}"
            + (f", over capacity {over} h of the day" if over else "")
        )
    return "\n".join(lines)
