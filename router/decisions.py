"""The decision service: customer reference -> snapshot -> scores -> policy -> decision.

One Redis round trip for a customer id (two for a phone number or e-mail: index, then
snapshot). Everything else is in-process: features, ONNX inference, CLV percentile from a
periodically refreshed copy of the population histogram, policy. The audit record is
queued, not written, before the answer goes out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from datetime import UTC, datetime

from redis.exceptions import RedisError

from router import metrics
from router.audit import AuditRecord, AuditWriter
from router.errors import BadInput
from router.features import FEATURE_NAMES, features
from router.identity import IdentityHasher, InvalidIdentifier, normalise_email, normalise_phone
from router.model import ChurnModel, ModelError
from router.policy import DecisionInput, Policy, decide
from router.reducer import Snapshot
from router.scoring import ClvDistribution, advocacy_score, clv, sentiment_label, upsell_score
from router.settings import Settings
from router.store import CustomerRecord, StateStore
from schemas.api import ClassifyRequest, CustomerRef, Decision, ScoreCard

__all__ = ["DecisionService", "Resolved"]

log = logging.getLogger("router.decisions")
_F = {name: i for i, name in enumerate(FEATURE_NAMES)}


class Resolved:
    """A customer reference resolved against Redis."""

    __slots__ = ("customer_id", "customer_key", "degraded_cause", "record")

    def __init__(
        self,
        customer_id: str | None,
        customer_key: str | None,
        record: CustomerRecord | None,
        degraded_cause: str | None,
    ) -> None:
        self.customer_id = customer_id
        self.customer_key = customer_key
        self.record = record
        self.degraded_cause = degraded_cause

    @property
    def snapshot(self) -> Snapshot | None:
        snap = self.record.snapshot if self.record else None
        return snap if snap is not None and snap.customer_id else None


class DecisionService:
    """Everything a decision needs, loaded once; swapped atomically on reload."""

    def __init__(
        self,
        settings: Settings,
        store: StateStore,
        model: ChurnModel | None,
        policy: Policy,
        audit: AuditWriter,
    ) -> None:
        self.settings = settings
        self.store = store
        self.hasher: IdentityHasher = store.hasher
        self.model = model
        self.policy = policy
        self.audit = audit
        self.distribution = ClvDistribution({})
        self._refresher: asyncio.Task[None] | None = None
        self._seq = 0
        self._node = os.urandom(3).hex()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.refresh_distribution()
        self._refresher = asyncio.create_task(self._refresh_loop(), name="clv-distribution")

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None

    async def refresh_distribution(self) -> None:
        """Reload the population's CLV histogram (off the request path)."""
        try:
            self.distribution = ClvDistribution(await self.store.histogram())
        except (RedisError, OSError) as exc:
            log.warning("CLV histogram refresh failed: %s", type(exc).__name__)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(5.0)
            await self.refresh_distribution()

    # -- lookups -----------------------------------------------------------------------------

    async def resolve(self, ref: CustomerRef) -> Resolved:
        """Find the customer's record; Redis faults give a degraded, unknown customer."""
        t0 = time.perf_counter()
        try:
            customer_id = ref.customer_id
            if customer_id is None:
                index_key = self._index_key(ref)
                customer_id = await self.store.resolve_index(index_key)
                if customer_id is None:
                    return Resolved(None, None, None, None)
            h = self.hasher.customer_key(customer_id)
            record = await self.store.read_customer(h)
        except (RedisError, OSError, TimeoutError) as exc:
            metrics.REDIS_ERRORS.labels("read_customer", type(exc).__name__).inc()
            return Resolved(ref.customer_id, None, None, "redis_unavailable")
        finally:
            metrics.REDIS_SECONDS.labels("read_customer").observe(time.perf_counter() - t0)
        return Resolved(customer_id, h, record, None)

    def _index_key(self, ref: CustomerRef) -> str:
        keys = self.store.keys
        try:
            if ref.phone is not None:
                e164 = normalise_phone(ref.phone, self.hasher.default_region)
                return keys.phone(self.hasher.digest("phone", e164))
            assert ref.email is not None
            return keys.email(self.hasher.digest("email", normalise_email(ref.email)))
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
        received_at = req.received_at or datetime.fromtimestamp(now, UTC)
        snap = resolved.snapshot
        degraded = resolved.degraded_cause
        model = self.model
        churn: float | None = None
        clv_pct: float | None = None
        upsell = advocacy = sentiment = None
        last_interaction = None
        last_at = None
        if snap is not None:
            row = features(snap, int(now))
            if model is not None:
                try:
                    t1 = time.perf_counter()
                    churn = model.predict_one(row)
                    metrics.MODEL_SECONDS.labels("request").observe(time.perf_counter() - t1)
                except ModelError:
                    degraded = degraded or "model_failed"
            else:
                degraded = degraded or "model_unavailable"
            scores = resolved.record.scores if resolved.record else None
            if churn is None and scores is not None:
                churn = scores.churn  # last score the consumer computed
            churn_for_value = churn if churn is not None else 0.1
            value = clv(snap, row, churn_for_value, self.settings.model)
            clv_pct = self.distribution.percentile(value)
            upsell = upsell_score(row, churn_for_value)
            advocacy = advocacy_score(row)
            sentiment = row[_F["sentiment_90d"]] if row[_F["sentiment_90d"]] or snap.tickets_resolved else None
            last_interaction = snap.last_interaction or None
            last_at = datetime.fromtimestamp(snap.last_interaction_at, UTC) if snap.last_interaction_at else None
            open_tickets = int(row[_F["open_tickets"]])
            late90 = int(row[_F["late_payments_90d"]])
            nps = snap.nps
            mrr = row[_F["mrr"]]
            since_last = row[_F["days_since_last_interaction"]]
            segment = snap.segment
            active = snap.subscription == "active"
        else:
            open_tickets = late90 = 0
            nps = None
            mrr = 0.0
            since_last = None
            segment = "unknown"
            active = False
        if req.text_sentiment is not None:
            sentiment = req.text_sentiment if sentiment is None else (sentiment + req.text_sentiment) / 2.0

        inp = DecisionInput(
            known=snap is not None,
            clv_percentile=clv_pct,
            churn=churn,
            upsell=upsell,
            advocacy=advocacy,
            sentiment=sentiment,
            segment=segment,
            channel=req.channel,
            category=req.category,
            priority=req.priority,
            open_tickets=open_tickets,
            late_payments_90d=late90,
            nps=nps,
            subscription_active=active,
            mrr=mrr,
            days_since_last_interaction=since_last,
        )
        policy = self.policy
        out = decide(policy, inp, received_at)
        if degraded:
            metrics.DEGRADED.labels(degraded).inc()
        decision = Decision(
            decision_id=self.new_decision_id(),
            customer_known=snap is not None,
            tier=out.tier,
            sla=out.sla,
            escalation=out.escalation,
            next_best_actions=out.actions,
            scores=ScoreCard(
                clv_score=_round(clv_pct),
                churn_risk=_round(churn * 100 if churn is not None else None),
                upsell=_round(upsell * 100 if upsell is not None else None),
                advocacy=_round(advocacy * 100 if advocacy is not None else None),
                sentiment=sentiment_label(sentiment),  # type: ignore[arg-type]
                last_interaction=last_interaction,
                last_interaction_at=last_at,
            ),
            reasons=out.reasons[:3],
            model_version=model.version if model is not None else "none",
            policy_version=policy.version,
            degraded=degraded is not None,
            degraded_cause=degraded,
            human_review=snap is not None and not snap.consent,
        )
        metrics.DECISION_SECONDS.observe(time.perf_counter() - t0)
        metrics.DECISIONS.labels(
            decision.tier, decision.escalation.role, out.actions[0].code if out.actions else "none"
        ).inc()
        self.audit.record(
            AuditRecord(
                decision_id=decision.decision_id,
                at=now,
                customer_key=resolved.customer_key,
                inputs={
                    "channel": req.channel,
                    "category": req.category,
                    "priority": req.priority,
                    "clv_score": decision.scores.clv_score,
                    "churn_risk": decision.scores.churn_risk,
                },
                tier=decision.tier,
                role=decision.escalation.role,
                queue=decision.escalation.queue,
                actions=[a.code for a in decision.next_best_actions],
                due_at=decision.sla.due_at.isoformat(),
                model_version=decision.model_version,
                policy_version=decision.policy_version,
                degraded_cause=degraded,
            )
        )
        return decision


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
