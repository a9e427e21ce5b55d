"""The customer as a person may see and correct them: scores explained, overrides, feedback, erasure.

GDPR transparency (art. 15/22): :meth:`CustomerService.view` shows every score with how it
came about (the churn model's main factors in plain words, measured on the live model; the
CLV formula with its inputs), the tier and any override, and the recent decisions from the
audit stream. A person can override the tier (with reason and expiry), feed back what
happened after a decision, and erase the customer. Every one of these actions is audited
with the name of the API key that performed it.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from router.core.features import features
from router.core.reducer import plan_of
from router.core.scoring import CLV_FORMULA, assess, sentiment_label
from router.errors import REDIS_FAULTS, NotFound, Unavailable
from router.ops.logs import redact
from router.serving.live import Live
from router.serving.publisher import EventPublisher
from router.settings import ModelSettings
from router.state.audit import AdminRecord, AnyRecord, AuditWriter
from router.state.store import StateStore
from schemas.api import (
    AuditEntry,
    ClvBreakdown,
    CustomerView,
    ErasureAccepted,
    ExplainedFactor,
    OutcomeAccepted,
    OutcomeRequest,
    Override,
    OverrideRequest,
    ScoreCard,
)
from schemas.events import ErasureRequested, Outcome

__all__ = ["CustomerService"]


class CustomerService:
    def __init__(
        self, store: StateStore, live: Live, audit: AuditWriter, publisher: EventPublisher, scoring: ModelSettings
    ) -> None:
        self.store = store
        self.hasher = store.hasher
        self.live = live
        self.audit = audit
        self.publisher = publisher
        self.scoring = scoring

    def _admin(self, action: str, actor: str, customer_key: str | None, detail: str | None = None, **kw: Any) -> None:
        self.audit.record(
            AdminRecord(action=action, at=time.time(), actor=actor, customer_key=customer_key, detail=detail, **kw)
        )

    # -- transparency ------------------------------------------------------------------------

    async def view(self, customer_id: str) -> CustomerView:
        h = self.hasher.customer_key(customer_id)
        try:
            record, override = await self.store.read_for_decision(h)
            history = await self.audit.for_customer(h, count=20)
        except REDIS_FAULTS as exc:
            raise Unavailable(f"customer store unavailable ({type(exc).__name__})") from None
        model, policy = self.live.model, self.live.policy
        snap = record.snapshot if record.snapshot is not None and record.snapshot.customer_id else None
        recent = [_entry(r) for r in history]
        if snap is None:
            return CustomerView(
                customer_known=False, tier=override.tier if override else None, scores=None, churn_factors=[],
                clv=None, override=override, segment=None, plan=None, subscription=None,
                automated_decision_consent=None, recent_decisions=recent,
                model_version=model.version if model else "none", policy_version=policy.version,
            )  # fmt: skip
        row = features(snap, int(time.time()))
        factors: list[ExplainedFactor] = []
        churn: float | None
        if model is not None:
            churn = model.predict_one(row)
            factors = [
                ExplainedFactor(feature=f.feature, direction=f.direction, effect_pp=f.effect_pp, phrase=f.phrase)
                for f in model.explain(row, top=5)
            ]
        else:
            churn = record.scores.churn if record.scores else None
        scores = assess(snap, row, churn, self.scoring, policy.service_prices)
        value = scores.clv
        pct = self.live.distribution.percentile(value.value)
        return CustomerView(
            customer_known=True,
            tier=override.tier if override else (policy.tier_for(pct) if pct is not None else None),
            scores=ScoreCard(
                clv_score=None if pct is None else round(pct, 1),
                churn_risk=round(scores.churn * 100, 1),
                upsell=round(scores.upsell * 100, 1),
                advocacy=round(scores.advocacy * 100, 1),
                sentiment=sentiment_label(scores.sentiment),  # type: ignore[arg-type]
                last_interaction=snap.last_interaction or None,
                last_interaction_at=datetime.fromtimestamp(snap.last_interaction_at, UTC)
                if snap.last_interaction_at
                else None,
            ),
            churn_factors=factors,
            clv=ClvBreakdown(
                clv=round(value.value, 2),
                clv_score=None if pct is None else round(pct, 1),
                monthly_margin=round(value.monthly_margin, 2),
                subscription_margin=round(value.subscription_margin, 2),
                order_margin_per_month=round(value.order_margin_per_month, 2),
                expected_months=round(value.expected_months, 2),
                acquisition_cost=value.acquisition_cost,
                mrr=value.mrr,
                churn_used=round(scores.churn, 4),
                formula=CLV_FORMULA,
                support_cost_per_month=round(value.support_cost_per_month, 2),
                support_cost_per_year=round(value.support_cost_per_year, 2),
                support_contacts=sum(snap.contacts),
                currency=policy.service_prices.currency,
            ),
            override=override,
            segment=snap.segment,
            plan=plan_of(snap),
            subscription=snap.subscription,
            automated_decision_consent=snap.consent,
            recent_decisions=recent,
            model_version=model.version if model else "none",
            policy_version=policy.version,
        )

    # -- overrides ---------------------------------------------------------------------------

    async def set_override(self, customer_id: str, req: OverrideRequest, actor: str) -> Override:
        h = self.hasher.customer_key(customer_id)
        now = datetime.now(UTC).replace(microsecond=0)
        override = Override(
            tier=req.tier,
            reason=req.reason,
            by=actor,
            set_at=now,
            expires_at=now + timedelta(hours=req.expires_in_hours),
        )
        try:
            record = await self.store.read_customer(h)
            live = record.snapshot is not None and bool(record.snapshot.customer_id)
            # the write checks again, atomically: an erasure may be applied in between
            stored = live and await self.store.set_override(h, override, round(req.expires_in_hours * 3_600_000))
        except REDIS_FAULTS as exc:
            raise Unavailable(f"customer store unavailable ({type(exc).__name__})") from None
        if not stored:
            raise NotFound("no such customer: an override needs a known customer")
        detail = f"tier {req.tier} until {override.expires_at.isoformat()}: {redact(req.reason)}"
        self._admin("override_set", actor, h, detail)
        return override

    async def remove_override(self, customer_id: str, actor: str, reason: str | None = None) -> None:
        h = self.hasher.customer_key(customer_id)
        try:
            deleted = await self.store.delete_override(h)
        except REDIS_FAULTS as exc:
            raise Unavailable(f"customer store unavailable ({type(exc).__name__})") from None
        if not deleted:
            raise NotFound("no override for this customer (never set, removed or expired)")
        self._admin("override_removed", actor, h, redact(reason) if reason else None)

    # -- feedback and erasure ----------------------------------------------------------------

    async def outcome(self, decision_id: str, req: OutcomeRequest, actor: str) -> OutcomeAccepted:
        """Produce an ``outcome`` event: it becomes a training label through the normal path.

        Only for a decision this service made about this very customer, found in the customer's
        audit stream (404 otherwise): an outcome must not invent customers, nor label someone
        else's history. The stream keeps a live customer's last ~100 decisions and records.
        """
        h = self.hasher.customer_key(req.customer_id)
        await self.audit.flush()  # a decision this worker made a moment ago is in Redis now
        try:
            found = await self.audit.find_decision(h, decision_id)
        except REDIS_FAULTS as exc:
            raise Unavailable(f"audit trail unavailable ({type(exc).__name__})") from None
        if found is None:
            raise NotFound(
                "no decision with this id for this customer (unknown id or customer, erased, or beyond the "
                "customer's retained audit trail)"
            )
        # Deterministic id: a retried request produces the same event, which the reducer de-duplicates.
        event_id = f"outcome-{decision_id}-{req.outcome}"
        await self.publisher.publish(
            Outcome(
                event_id=event_id,
                customer_id=req.customer_id,
                occurred_at=req.occurred_at or datetime.now(UTC),
                outcome=req.outcome,
                decision_id=decision_id,
            )
        )
        self._admin("outcome_recorded", actor, h, req.outcome, decision_id=decision_id)
        return OutcomeAccepted(event_id=event_id, decision_id=decision_id)

    async def erase(self, customer_id: str, actor: str) -> ErasureAccepted:
        """Same effect as an ``erasure_requested`` event, because it is one (acks from all replicas)."""
        h = self.hasher.customer_key(customer_id)
        now = datetime.now(UTC)
        event_id = f"erasure-{h[:16]}-{int(now.timestamp() * 1000)}"
        await self.publisher.publish(ErasureRequested(event_id=event_id, customer_id=customer_id, occurred_at=now))
        # This worker's queued decisions go out first. Records still queued in other workers cannot
        # bring the stream back for long: the consumer deletes it with the tombstone, and from then
        # on the audit script refuses to write it (the customer is no longer live).
        await self.audit.flush()
        try:
            async with asyncio.timeout(2.0):
                await self.store.forget_customer(h)
        except REDIS_FAULTS as exc:
            raise Unavailable(
                f"erasure event accepted, but the override and audit stream could not be deleted yet "
                f"({type(exc).__name__}); repeat the request"
            ) from None
        # Only the global stream: the customer's own stream is gone, and stays gone.
        self._admin("erasure_requested", actor, None, f"customer {h}")
        return ErasureAccepted(
            event_id=event_id,
            will_remove=[
                "snapshot and derived scores",
                "phone and e-mail index entries",
                "CLV histogram entry",
                "tier override",
                "per-customer decision audit stream",
            ],
            kept=[
                "tombstone: erasure time under a keyed hash, so older events cannot bring the customer back",
                "global audit records, which hold only keyed hashes",
            ],
        )


def _entry(rec: AnyRecord) -> AuditEntry:
    at = datetime.fromtimestamp(rec.at, UTC)
    if isinstance(rec, AdminRecord):
        return AuditEntry(kind=rec.action, decision_id=rec.decision_id, at=at, detail=rec.detail)
    return AuditEntry(
        kind="decision" if rec.override is None else "decision_overridden",
        decision_id=rec.decision_id,
        at=at,
        tier=rec.tier,
        queue=rec.queue,
        actions=rec.actions,
        model_version=rec.model_version,
        policy_version=rec.policy_version,
        degraded_cause=rec.degraded_cause,
        reasons=rec.reasons,
    )
