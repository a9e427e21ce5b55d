"""The decision service: customer reference -> snapshot -> scores -> policy -> decision.

One Redis round trip for a customer id (two for a phone number or e-mail: index, then
snapshot): the snapshot and a person's tier override share a hash tag and are read by one
script call (:meth:`StateStore.read_for_decision`). Everything else is in-process: features,
ONNX inference (skipped while the score the consumer stored with the snapshot is provably
still exact), the score set, the CLV percentile from a periodically refreshed copy of the
population histogram, policy. The audit record is queued, not written, before the answer goes out.

Degraded mode: a Redis fault (or a call slower than ``redis.timeout_ms``) gives a rule-based
decision for an unknown customer marked ``degraded``; after a few consecutive faults the
circuit breaker (:class:`~router.serving.breaker.Breaker`) skips Redis for
``redis.breaker_reset_ms`` and then lets one request probe. Model and policy come from
:class:`~router.serving.live.Live`, read once per decision.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from datetime import UTC, datetime
from typing import Any

from router.churn.model import ChurnModel
from router.core.features import FEATURE_NAMES, features
from router.core.identity import IdentityHasher, InvalidIdentifier, normalise_email, normalise_phone
from router.core.reducer import Snapshot
from router.core.scoring import ScoreSet, assess, sentiment_label
from router.errors import REDIS_FAULTS, BadInput
from router.ops import metrics
from router.ops.logs import bind_decision_id
from router.policy import DecisionInput, decide
from router.policy.control import Arm, arm_of
from router.serving.breaker import Breaker
from router.serving.live import Live
from router.settings import ModelSettings, RedisSettings
from router.state.audit import AuditRecord, AuditWriter
from router.state.records import CustomerRecord, Scores
from router.state.store import StateStore
from schemas.api import ClassifyRequest, CustomerRef, Decision, Override, ScoreCard

__all__ = ["DecisionService", "Resolved", "audit_inputs", "input_from_audit", "policy_input", "stored_score_exact"]

log = logging.getLogger("router.serving.decisions")
# Resolving a labelled child costs microseconds per call: on the request path, do it once.
_READ_SECONDS = metrics.REDIS_SECONDS.labels("read_customer")
_MODEL_SECONDS = metrics.MODEL_SECONDS.labels("request")
_CHURN_COMPUTED = metrics.REQUEST_CHURN.labels("computed")
_CHURN_REUSED = metrics.REQUEST_CHURN.labels("reused")
_F = {name: i for i, name in enumerate(FEATURE_NAMES)}
_OPEN_TICKETS, _LATE90, _MRR, _SINCE_LAST = (
    _F["open_tickets"],
    _F["late_payments_90d"],
    _F["mrr"],
    _F["days_since_last_interaction"],
)


@functools.cache
def _labelled(metric: Any, *values: str) -> Any:
    return metric.labels(*values)


class Resolved:
    """A customer reference resolved against Redis."""

    __slots__ = ("customer_id", "customer_key", "degraded_cause", "override", "record")

    def __init__(
        self,
        customer_id: str | None,
        customer_key: str | None,
        record: CustomerRecord | None,
        degraded_cause: str | None,
        override: Override | None = None,
    ) -> None:
        self.customer_id = customer_id
        self.customer_key = customer_key
        self.record = record
        self.degraded_cause = degraded_cause
        self.override = override

    @property
    def snapshot(self) -> Snapshot | None:
        snap = self.record.snapshot if self.record else None
        return snap if snap is not None and snap.customer_id else None


class DecisionService:
    """Resolves a customer and decides; everything it needs is loaded once, on :class:`Live`."""

    def __init__(
        self,
        live: Live,
        reader: StateStore,
        audit: AuditWriter,
        redis: RedisSettings,
        scoring: ModelSettings,
    ) -> None:
        self.live = live
        self.reader = reader
        """A client without socket timeouts: :meth:`resolve` bounds the lookup as a whole."""
        self.hasher: IdentityHasher = reader.hasher
        self.audit = audit
        self.scoring = scoring
        self.breaker = Breaker(reset_s=redis.breaker_reset_ms / 1000)
        self._timeout_s = redis.timeout_ms / 1000
        self._seq = 0
        self._node = os.urandom(3).hex()

    # -- lookups -----------------------------------------------------------------------------

    async def resolve(self, ref: CustomerRef) -> Resolved:
        """Find the customer's record and override; Redis faults give a degraded, unknown customer."""
        customer_id = ref.customer_id
        index = self._index_key(ref) if customer_id is None else None  # bad input is a 400, not a fault
        h = self.hasher.customer_key(customer_id) if customer_id is not None else None
        if not self.breaker.allow():
            return Resolved(customer_id, h, None, "redis_unavailable")
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout_s):  # the reader client's only bound
                if index is not None:
                    customer_id = await self.reader.resolve_index(index[0])
                    if customer_id is None:
                        self.breaker.success()
                        return Resolved(None, None, None, None)
                    h = self.hasher.customer_key(customer_id)
                assert h is not None
                record, override = await self.reader.read_for_decision(h)
        except REDIS_FAULTS as exc:
            self.breaker.failure()
            metrics.REDIS_ERRORS.labels("read_customer", type(exc).__name__).inc()
            return Resolved(customer_id, h, None, "redis_unavailable")
        finally:
            _READ_SECONDS.observe(time.perf_counter() - t0)
        self.breaker.success()
        if index is not None and not _lists(record.snapshot, index):
            # An index entry the snapshot it names does not confirm (left by a crash or a zombie
            # writer on Redis Cluster, where index and snapshot cannot share one atomic write):
            # the number or address is not that customer's (any more), so nobody is named.
            return Resolved(None, None, None, None)
        return Resolved(customer_id, h, record, None, override)

    def _index_key(self, ref: CustomerRef) -> tuple[str, str, str]:
        """(index key, ``phone`` or ``email``, keyed hash) of a phone or e-mail reference."""
        keys = self.reader.keys
        try:
            if ref.phone is not None:
                digest = self.hasher.digest("phone", normalise_phone(ref.phone, self.hasher.default_region))
                return keys.phone(digest), "phone", digest
            assert ref.email is not None
            digest = self.hasher.digest("email", normalise_email(ref.email))
            return keys.email(digest), "email", digest
        except InvalidIdentifier as exc:
            field = "customer.phone" if ref.phone is not None else "customer.email"
            raise BadInput(f"{field}: {exc}") from None

    # -- decisions ---------------------------------------------------------------------------

    def new_decision_id(self) -> str:
        self._seq += 1
        return f"d-{time.time_ns() // 1_000_000:x}-{self._node}-{self._seq:x}"

    async def classify(self, req: ClassifyRequest) -> Decision:
        """Route one ticket, call or chat."""
        resolved = await self.resolve(req.customer)
        return self.decide(req, resolved)

    def decide(self, req: ClassifyRequest, resolved: Resolved) -> Decision:
        """Scores and policy for an already resolved customer (pure CPU, no I/O)."""
        t0 = time.perf_counter()
        now = time.time()
        model, policy = self.live.model, self.live.policy  # each read once: a reload never mixes
        snap = resolved.snapshot
        degraded = resolved.degraded_cause
        scores: ScoreSet | None = None
        churn: float | None = None
        clv_pct: float | None = None
        row: list[float] | None = None
        if snap is not None:
            row = features(snap, int(now))
            churn, model_fault = self._churn(model, resolved.record, row, int(now))
            degraded = degraded or model_fault
            scores = assess(snap, row, churn, self.scoring, policy.service_prices)
            clv_pct = self.live.distribution.percentile(scores.clv.value)
        sentiment = _with_text_sentiment(scores.sentiment if scores else None, req.text_sentiment)
        inp = policy_input(req, snap, row, scores, churn, clv_pct, sentiment, resolved.override)
        out = decide(policy, inp, req.received_at or datetime.fromtimestamp(now, UTC))
        actions, withheld = out.actions, []
        arm: Arm | None = None
        share = self.scoring.nba_control_share
        if snap is not None and resolved.customer_key is not None and share > 0.0:
            arm = arm_of(resolved.customer_key, share)
            if arm == "control":  # measured against: the standard action, whatever the rules chose
                withheld = [a.code for a in actions]
                actions = [policy.standard_action]
        decision = Decision(
            decision_id=self.new_decision_id(),
            customer_known=snap is not None,
            tier=out.tier,
            sla=out.sla,
            escalation=out.escalation,
            next_best_actions=actions,
            scores=_score_card(snap, scores, churn, clv_pct, sentiment),
            reasons=out.reasons[:3],
            model_version=model.version if model is not None else "none",
            policy_version=policy.version,
            degraded=degraded is not None,
            degraded_cause=degraded,
            human_review=snap is not None and not snap.consent,
            overridden=resolved.override is not None,
            nba_arm=arm,
        )
        bind_decision_id(decision.decision_id)  # every later log line of this request names it
        self._observe(decision, degraded, time.perf_counter() - t0)
        self.audit.record(_audit_record(decision, inp, resolved, now, withheld))
        return decision

    def _churn(
        self, model: ChurnModel | None, record: CustomerRecord | None, row: list[float], as_of: int
    ) -> tuple[float | None, str | None]:
        """(churn probability, degraded cause): the consumer's stored score while it is exact, else ONNX."""
        stored = record.scores if record else None
        if model is None:
            return (stored.churn if stored else None), "model_unavailable"
        if stored_score_exact(stored, model, as_of):
            # The consumer scored this very snapshot with this very model, and nothing the trees
            # compare has moved since (ChurnModel.stable_until): the model would return the same float.
            _CHURN_REUSED.inc()
            return stored.churn, None  # type: ignore[union-attr]  # stored_score_exact checked it
        try:
            t1 = time.perf_counter()
            churn = model.predict_one(row)
            _MODEL_SECONDS.observe(time.perf_counter() - t1)
            _CHURN_COMPUTED.inc()
            return churn, None
        except Exception as exc:  # onnxruntime raises its own untyped errors; degrade, never 5xx
            log.warning("churn model failed on a request: %s", type(exc).__name__)
            return (stored.churn if stored else None), "model_failed"

    def _observe(self, decision: Decision, degraded: str | None, took_s: float) -> None:
        if degraded:
            _labelled(metrics.DEGRADED, degraded).inc()
        metrics.DECISION_SECONDS.observe(took_s)
        action = decision.next_best_actions[0].code if decision.next_best_actions else "none"
        _labelled(metrics.DECISIONS, decision.tier, decision.escalation.role, action).inc()


def _lists(snap: Snapshot | None, index: tuple[str, str, str]) -> bool:
    """Does the snapshot an index entry named list that phone number or e-mail (keyed hash)?"""
    if snap is None or not snap.customer_id:
        return False
    _, kind, digest = index
    return digest in (snap.phone_keys if kind == "phone" else snap.email_keys)


def stored_score_exact(stored: Scores | None, model: ChurnModel, as_of: int) -> bool:
    """Is the stored score what ``model`` returns for the stored snapshot at ``as_of``?"""
    return stored is not None and stored.model_id == model.model_id != "" and stored.as_of <= as_of < stored.valid_until


def _with_text_sentiment(history: float | None, text: float | None) -> float | None:
    """The customer's tone: their recent contacts' averaged with this contact's text, if given."""
    if text is None:
        return history
    return text if history is None else (history + text) / 2.0


def policy_input(
    req: ClassifyRequest,
    snap: Snapshot | None,
    row: list[float] | None,
    scores: ScoreSet | None,
    churn: float | None,
    clv_pct: float | None,
    sentiment: float | None,
    override: Override | None,
) -> DecisionInput:
    """What the policy sees of this contact and this customer (an unknown customer: the defaults)."""
    known = snap is not None and row is not None and scores is not None
    return DecisionInput(
        known=known,
        clv_percentile=clv_pct,
        churn=churn,
        upsell=scores.upsell if scores else None,
        advocacy=scores.advocacy if scores else None,
        sentiment=sentiment,
        segment=snap.segment if snap else "unknown",
        channel=req.channel,
        category=req.category,
        priority=req.priority,
        open_tickets=int(row[_OPEN_TICKETS]) if row else 0,
        late_payments_90d=int(row[_LATE90]) if row else 0,
        nps=snap.nps if snap else None,
        subscription_active=snap.subscription == "active" if snap else False,
        mrr=row[_MRR] if row else 0.0,
        days_since_last_interaction=row[_SINCE_LAST] if row else None,
        support_cost=scores.clv.support_cost_per_year if scores else None,
        override_tier=override.tier if override is not None else None,
    )


def _score_card(
    snap: Snapshot | None, scores: ScoreSet | None, churn: float | None, clv_pct: float | None, sentiment: float | None
) -> ScoreCard:
    """The scores an agent may see, in points (0-100) and words."""
    return ScoreCard(
        clv_score=_round(clv_pct),
        churn_risk=_round(churn * 100 if churn is not None else None),
        upsell=_round(scores.upsell * 100 if scores else None),
        advocacy=_round(scores.advocacy * 100 if scores else None),
        sentiment=sentiment_label(sentiment),  # type: ignore[arg-type]
        last_interaction=(snap.last_interaction or None) if snap else None,
        last_interaction_at=datetime.fromtimestamp(snap.last_interaction_at, UTC)
        if snap and snap.last_interaction_at
        else None,
    )


def _audit_record(
    decision: Decision, inp: DecisionInput, resolved: Resolved, now: float, withheld: list[str]
) -> AuditRecord:
    """The decision as the audit trail keeps it: keyed hash, inputs, outcome and reasons, no clear identifier."""
    return AuditRecord(
        decision_id=decision.decision_id,
        at=now,
        customer_key=resolved.customer_key,
        inputs=audit_inputs(inp, decision),
        tier=decision.tier,
        role=decision.escalation.role,
        queue=decision.escalation.queue,
        actions=[a.code for a in decision.next_best_actions],
        due_at=decision.sla.due_at.isoformat(),
        model_version=decision.model_version,
        policy_version=decision.policy_version,
        degraded_cause=decision.degraded_cause,
        override=resolved.override.tier if resolved.override is not None else None,
        reasons=decision.reasons,
        arm=decision.nba_arm,
        withheld=withheld,
    )


def audit_inputs(inp: DecisionInput, decision: Decision) -> dict[str, float | str | bool | None]:
    """Everything the policy looked at (scores and counts, no identifier), so that a policy
    simulation can replay the decision under a draft (:func:`input_from_audit`)."""
    return {
        "channel": inp.channel,
        "category": inp.category,
        "priority": inp.priority,
        "clv_score": decision.scores.clv_score,
        "churn_risk": decision.scores.churn_risk,
        "known": inp.known,
        "clv_percentile": inp.clv_percentile,
        "churn": inp.churn,
        "upsell": inp.upsell,
        "advocacy": inp.advocacy,
        "sentiment": inp.sentiment,
        "segment": inp.segment,
        "open_tickets": inp.open_tickets,
        "late_payments_90d": inp.late_payments_90d,
        "nps": inp.nps,
        "subscription_active": inp.subscription_active,
        "mrr": inp.mrr,
        "days_since_last_interaction": inp.days_since_last_interaction,
    }


def input_from_audit(inputs: dict[str, float | str | bool | None], override: str | None) -> DecisionInput:
    """The policy input of an audited decision (records written before every input was kept
    give the policy what they have: a missing score never satisfies a threshold)."""
    g = inputs.get

    def num(name: str) -> float | None:
        v = g(name)
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

    pct = num("clv_percentile")
    churn = num("churn")
    if pct is None and "clv_percentile" not in inputs:  # older record: the rounded points
        pct = num("clv_score")
    if churn is None and "churn" not in inputs and (points := num("churn_risk")) is not None:
        churn = points / 100.0
    known = g("known")
    nps = num("nps")
    return DecisionInput(
        known=bool(known) if known is not None else pct is not None,
        clv_percentile=pct,
        churn=churn,
        upsell=num("upsell"),
        advocacy=num("advocacy"),
        sentiment=num("sentiment"),
        segment=str(g("segment") or "unknown"),
        channel=str(g("channel") or ""),
        category=str(g("category") or ""),
        priority=str(g("priority") or "normal"),
        open_tickets=int(num("open_tickets") or 0),
        late_payments_90d=int(num("late_payments_90d") or 0),
        nps=None if nps is None else int(nps),
        subscription_active=bool(g("subscription_active")),
        mrr=num("mrr") or 0.0,
        days_since_last_interaction=num("days_since_last_interaction"),
        override_tier=override,
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
