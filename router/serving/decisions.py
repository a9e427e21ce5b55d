"""The decision service: customer reference -> snapshot -> scores -> policy -> decision.

One Redis round trip for a customer id (two for a phone number or e-mail: index, then
snapshot): the snapshot and a person's tier override share a hash tag and are read in one
pipeline. Everything else is in-process: features, ONNX inference (skipped while the score
the consumer stored with the snapshot is provably still exact), CLV percentile from a
periodically refreshed copy of the population histogram, policy. The audit record is
queued, not written, before the answer goes out.

Degraded mode: a Redis fault (or a call slower than ``redis.timeout_ms``) gives a rule-based
decision for an unknown customer marked ``degraded``; after a few consecutive faults a small
circuit breaker skips Redis for ``redis.breaker_reset_ms`` and then lets one request probe,
so a dead Redis costs no timeout per request and a recovered one is used again by itself.
Model and policy are swapped by reassigning one attribute (:meth:`DecisionService.reload_model`,
:meth:`DecisionService.reload_policy`); a request reads each reference once, so it sees
either the old or the new object, never a mix, and no request is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
from redis.exceptions import NoScriptError

from router.churn.model import ChurnModel
from router.core.features import FEATURE_NAMES, features
from router.core.identity import IdentityHasher, InvalidIdentifier, normalise_email, normalise_phone
from router.core.reducer import Snapshot
from router.core.scoring import ClvDistribution, advocacy_score, clv, sentiment_label, upsell_score
from router.errors import REDIS_FAULTS, BadInput
from router.ops import metrics
from router.ops.logs import bind_decision_id
from router.policy import DecisionInput, Policy, decide, load_policy
from router.settings import Settings
from router.state.audit import AuditRecord, AuditWriter
from router.state.overrides import decode_override, override_key
from router.state.store import CustomerRecord, RedisClient, Scores, StateStore, decode_snapshot
from schemas.api import ClassifyRequest, CustomerRef, Decision, Override, ScoreCard

__all__ = ["Breaker", "DecisionService", "Resolved"]

log = logging.getLogger("router.serving.decisions")
_REFRESH_MIN_S = 5.0
# Resolving a labelled child costs microseconds per call: on the request path, do it once.
_READ_SECONDS = metrics.REDIS_SECONDS.labels("read_customer")
_MODEL_SECONDS = metrics.MODEL_SECONDS.labels("request")
_CHURN_COMPUTED = metrics.REQUEST_CHURN.labels("computed")
_CHURN_REUSED = metrics.REQUEST_CHURN.labels("reused")


@functools.cache
def _labelled(metric: Any, *values: str) -> Any:
    return metric.labels(*values)


_REFRESH_MAX_S = 60.0
_F = {name: i for i, name in enumerate(FEATURE_NAMES)}
_READ_LUA = "return {redis.call('HMGET', KEYS[1], 's', 'k'), redis.call('GET', KEYS[2]) or false}"
_scores_dec = msgspec.msgpack.Decoder(Scores)


class Breaker:
    """Tiny circuit breaker: open after ``threshold`` consecutive faults, probe after ``reset_s``."""

    __slots__ = ("_failures", "_open_until", "reset_s", "threshold")

    def __init__(self, threshold: int = 3, reset_s: float = 1.0) -> None:
        self.threshold = threshold
        self.reset_s = reset_s
        self._failures = 0
        self._open_until = 0.0

    @property
    def open(self) -> bool:
        return self._failures >= self.threshold

    def allow(self) -> bool:
        """May a request try Redis? While open, one probe per ``reset_s`` gets through."""
        if self._failures < self.threshold:
            return True
        now = time.monotonic()
        if now < self._open_until:
            return False
        self._open_until = now + self.reset_s  # this request is the probe; others keep skipping
        return True

    def success(self) -> None:
        if self._failures:
            if self._failures >= self.threshold:
                log.info("Redis answers again: circuit closed")
            self._failures = 0

    def failure(self) -> None:
        self._failures += 1
        if self._failures == self.threshold:
            log.warning("Redis failing: circuit open, decisions degraded until a probe succeeds")
        if self._failures >= self.threshold:
            self._open_until = time.monotonic() + self.reset_s


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
    """Everything a decision needs, loaded once; swapped atomically on reload."""

    def __init__(
        self,
        settings: Settings,
        store: StateStore,
        model: ChurnModel | None,
        policy: Policy,
        audit: AuditWriter,
        background: StateStore | None = None,
        reader: StateStore | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.background = background or store
        """Same Redis, a client with a budget of seconds: for the population-wide reads."""
        self.reader = reader or store
        """Same Redis, a client without socket timeouts: :meth:`resolve` bounds the lookup as a whole."""
        self.hasher: IdentityHasher = store.hasher
        self.model = model
        self.policy = policy
        self.audit = audit
        self.distribution = ClvDistribution({})
        self.breaker = Breaker(reset_s=settings.redis.breaker_reset_ms / 1000)
        self._timeout_s = settings.redis.timeout_ms / 1000
        self._read_sha = ""
        self._refresher: asyncio.Task[None] | None = None
        self._refresh_every_s = _REFRESH_MIN_S
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
        """Reload the population's CLV histogram (off the request path, on the background client)."""
        started = time.perf_counter()
        try:
            self.distribution = ClvDistribution(await self.background.histogram())
        except REDIS_FAULTS as exc:
            log.warning("CLV histogram refresh failed: %s", type(exc).__name__)
        # A big population takes a while to read, and each chunk of it holds the event loop for a few
        # milliseconds (requests wait meanwhile): refresh less often rather than keep Redis and this
        # worker busy with it (about 1 % of the time at most; a percentile moves slowly).
        took = time.perf_counter() - started
        self._refresh_every_s = min(_REFRESH_MAX_S, max(_REFRESH_MIN_S, 100 * took))

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_every_s)
            await self.refresh_distribution()

    # -- reloads -----------------------------------------------------------------------------

    def reload_policy(self, path: str | None = None) -> tuple[Policy, Policy]:
        """Load ``path`` (default: configured) and swap it in; (old, new). PolicyError keeps the old."""
        new = load_policy(path or self.settings.policy.path)
        old, self.policy = self.policy, new
        metrics.POLICY_INFO.info({"version": new.version})
        log.info("policy %s replaced by %s", old.version, new.version)
        return old, new

    async def reload_model(self, path: str | None = None) -> tuple[ChurnModel | None, ChurnModel]:
        """Load ``path`` (default: configured) and swap it in; (old, new). ModelError keeps the old."""
        target = path or self.settings.model.path
        # Loading takes tens of milliseconds: off the event loop, so requests keep being served.
        new = await asyncio.to_thread(ChurnModel.load, target)
        old, self.model = self.model, new
        metrics.MODEL_INFO.info({"version": new.version, "path": str(target)})
        log.info("churn model %s replaced by %s", old.version if old else "none", new.version)
        return old, new

    # -- lookups -----------------------------------------------------------------------------

    async def resolve(self, ref: CustomerRef) -> Resolved:
        """Find the customer's record and override; Redis faults give a degraded, unknown customer."""
        customer_id = ref.customer_id
        index_key = self._index_key(ref) if customer_id is None else None  # bad input is a 400, not a fault
        h = self.hasher.customer_key(customer_id) if customer_id is not None else None
        if not self.breaker.allow():
            return Resolved(customer_id, h, None, "redis_unavailable")
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout_s):  # the reader client's only bound
                if index_key is not None:
                    customer_id = await self.reader.resolve_index(index_key)
                    if customer_id is None:
                        self.breaker.success()
                        return Resolved(None, None, None, None)
                    h = self.hasher.customer_key(customer_id)
                assert h is not None
                record, override = await self._read(self.reader.client, h)
        except REDIS_FAULTS as exc:
            self.breaker.failure()
            metrics.REDIS_ERRORS.labels("read_customer", type(exc).__name__).inc()
            return Resolved(customer_id, h, None, "redis_unavailable")
        finally:
            _READ_SECONDS.observe(time.perf_counter() - t0)
        self.breaker.success()
        return Resolved(customer_id, h, record, None, override)

    async def read(self, h: str) -> tuple[CustomerRecord, Override | None]:
        """Snapshot, scores and override of the customer with keyed hash ``h`` (raises on Redis faults)."""
        return await self._read(self.store.client, h)

    async def _read(self, client: RedisClient, h: str) -> tuple[CustomerRecord, Override | None]:
        # Snapshot hash and override share the hash tag {h[:2]}, so one script call reads both:
        # one command, one round trip, on a cluster too (a pipeline of two costs ~100 us more).
        keys = (self.store.keys.customer(h), override_key(self.store.keys, h))
        if not self._read_sha:
            self._read_sha = str(await client.script_load(_READ_LUA))
        try:
            row: Any = await client.evalsha(self._read_sha, 2, *keys)
        except NoScriptError:  # Redis restarted and forgot the script
            self._read_sha = str(await client.script_load(_READ_LUA))
            row = await client.evalsha(self._read_sha, 2, *keys)
        (raw_snap, raw_scores), raw_override = row
        record = CustomerRecord(
            snapshot=decode_snapshot(raw_snap) if raw_snap else None,
            marks={},
            scores=_scores_dec.decode(raw_scores) if raw_scores else None,
            raw_marks=None,
        )
        return record, decode_override(raw_override)

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
            as_of = int(now)
            row = features(snap, as_of)
            scores = resolved.record.scores if resolved.record else None
            if model is None:
                degraded = degraded or "model_unavailable"
            elif (
                scores is not None
                and scores.model_id == model.model_id != ""
                and scores.as_of <= as_of < scores.valid_until
            ):
                # The consumer scored this very snapshot with this very model, and nothing the trees
                # compare has moved since (ChurnModel.stable_until): the model would return the same float.
                churn = scores.churn
                _CHURN_REUSED.inc()
            else:
                try:
                    t1 = time.perf_counter()
                    churn = model.predict_one(row)
                    _MODEL_SECONDS.observe(time.perf_counter() - t1)
                    _CHURN_COMPUTED.inc()
                except Exception as exc:  # onnxruntime raises its own untyped errors; degrade, never 5xx
                    log.warning("churn model failed on a request: %s", type(exc).__name__)
                    degraded = degraded or "model_failed"
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
            override_tier=resolved.override.tier if resolved.override is not None else None,
        )
        policy = self.policy
        out = decide(policy, inp, received_at)
        if degraded:
            _labelled(metrics.DEGRADED, degraded).inc()
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
            overridden=resolved.override is not None,
        )
        bind_decision_id(decision.decision_id)  # every later log line of this request names it
        metrics.DECISION_SECONDS.observe(time.perf_counter() - t0)
        _labelled(
            metrics.DECISIONS, decision.tier, decision.escalation.role, out.actions[0].code if out.actions else "none"
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
                override=resolved.override.tier if resolved.override is not None else None,
            )
        )
        return decision


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
