"""Batch planning: what one polled batch does to the customers it touches, without any I/O.

The consumer's loop (:mod:`router.ingest.consumer`) polls, reads records, and writes; this
module decides everything in between, so unit tests call it with plain records:

1. :meth:`BatchPlanner.triage` decodes the records, dead-letters the poison ones (undecodable,
   schema-invalid, from the future) and splits the rest into customer-disjoint lanes;
2. :meth:`BatchPlanner.plan` folds each customer's events into its record (the one reducer),
   skipping redelivered offsets, and builds one :class:`~router.state.records.WriteOp` per
   changed customer with the index entries to add and remove and the portfolio increments;
3. it scores the changed customers in one batched model call (:mod:`router.core.scoring` for
   the rest of the score set), and raises a churn alert on an upward crossing of the threshold.

:meth:`BatchPlanner.rescore` runs step 3 alone for customers whose score is due without an event
(the sweep, :mod:`router.ingest.sweep`): the same scoring, histogram and counter moves and alerts.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeAlias

import msgspec
import numpy as np
from aiokafka.structs import ConsumerRecord, TopicPartition
from prometheus_client import Counter

from router.churn.model import ChurnModel, ModelError
from router.core.features import features
from router.core.identity import IdentityHasher
from router.core.kpi import NO_TOTALS, TOTAL_NAMES, alert_kpis, daily_kpis, move_score_kpis, totals
from router.core.reducer import Applied, Snapshot, fold
from router.core.scoring import NO_SERVICE_COST, ServicePrices, clv_bin, clv_parts
from router.ops import metrics
from router.settings import ModelSettings, StreamSettings
from router.state.keys import Keys
from router.state.records import SWEEP_MARK, CustomerRecord, Scores, WriteOp, due_time
from schemas.alerts import ChurnAlert
from schemas.events import CustomerEvent, event_decoder

__all__ = ["EVENTS_PER_LANE", "BatchPlanner", "Dead", "Pending", "Plan", "Triage"]

log = logging.getLogger("router.ingest.planning")

Record: TypeAlias = ConsumerRecord[bytes, bytes]


@dataclass(slots=True)
class Pending:
    """A decoded event and the record it came in."""

    record: Record
    event: CustomerEvent


@dataclass(slots=True)
class Dead:
    """A record for the dead-letter topic, and why."""

    record: Record
    reason: str
    error: BaseException

    def headers(self) -> list[tuple[str, bytes]]:
        """The dead letter's headers: where it came from and what was wrong (no quoted values)."""
        rec = self.record
        return [
            ("dlq.origin.topic", rec.topic.encode()),
            ("dlq.origin.partition", str(rec.partition).encode()),
            ("dlq.origin.offset", str(rec.offset).encode()),
            ("dlq.error.reason", self.reason.encode()),
            ("dlq.error.class", type(self.error).__name__.encode()),
            ("dlq.error.message", _safe_message(self.error).encode()),
        ]


@dataclass(slots=True)
class Triage:
    """A polled batch sorted out: lanes of customers' events, dead letters, offsets to store after."""

    lanes: list[dict[str, list[Pending]]]
    dead: list[Dead]
    next_offsets: dict[int, int]


@dataclass(slots=True)
class Plan:
    """What to write and publish for one lane's customers."""

    ops: list[WriteOp] = field(default_factory=list)
    alerts: list[ChurnAlert] = field(default_factory=list)
    dead: list[Dead] = field(default_factory=list)
    rows: np.ndarray[Any, np.dtype[np.float32]] | None = None
    """Feature rows of the customers scored by the model (kept for the shadow comparison)."""


EVENTS_PER_LANE = 200
"""Records per lane at least. A second lane pays when one lane's fold outlasts the other's Redis
round trips; in a small batch (low load, where the freshness of the state counts) it only adds
round trips and a model call, and one lane lets the consumer read with its placement check."""
_APPLIED, _TOO_LATE, _DUPLICATE = Applied.APPLIED, Applied.TOO_LATE, Applied.DUPLICATE
_NO_KEYS: list[str] = []


class BatchPlanner:
    """Everything the consumer decides about a batch, given what Redis holds."""

    def __init__(
        self,
        stream: StreamSettings,
        scoring: ModelSettings,
        hasher: IdentityHasher,
        keys: Keys,
        model: ChurnModel | None,
        prices: ServicePrices = NO_SERVICE_COST,
    ) -> None:
        self.stream = stream
        self.scoring = scoring
        self.hasher = hasher
        self.keys = keys
        self.model = model
        """Swapped by a reload (between batches): a plan reads it once."""
        self.prices = prices
        """Cost-to-serve prices from the policy; swapped by a policy reload."""
        self.applied = 0
        """Events applied since start (for the consumer's own reports)."""

    # -- 1. triage ---------------------------------------------------------------------------

    def triage(self, batch: Mapping[TopicPartition, Sequence[Record]], now: float) -> Triage:
        """Decode the batch and split it into customer-disjoint lanes: ``stream.lanes``, one per
        :data:`EVENTS_PER_LANE` records at most (a small batch is one lane)."""
        size = sum(len(records) for records in batch.values())
        lanes: list[dict[str, list[Pending]]] = [
            {} for _ in range(max(1, min(self.stream.lanes, size // EVENTS_PER_LANE)))
        ]
        dead: list[Dead] = []
        next_offsets: dict[int, int] = {}
        horizon = now + self.stream.max_future_s
        for tp, records in batch.items():
            next_offsets[tp.partition] = records[-1].offset + 1
            for rec in records:
                event = _decode(rec, dead)
                if event is not None and event.occurred_at.timestamp() > horizon:
                    # Lateness counts back from the newest event time: one event from 2100 would
                    # make every real event "too late" until 2100.
                    dead.append(Dead(rec, "from_future", _FromFuture(self.stream.max_future_s)))
                    event = None
                if event is not None:
                    cid = event.customer_id
                    lanes[hash(cid) % len(lanes)].setdefault(cid, []).append(Pending(rec, event))
        return Triage(lanes, dead, next_offsets)

    # -- 2. fold -----------------------------------------------------------------------------

    def plan(
        self, by_customer: Mapping[str, list[Pending]], keys: Sequence[str], records: Sequence[CustomerRecord], now: int
    ) -> Plan:
        """Fold each customer's events into its record and score the changed ones.

        ``keys`` are the customers' keyed hashes and ``records`` what Redis (or the cache) holds
        for them, in ``by_customer``'s order. Folding may mutate the records' snapshots.
        """
        out = Plan()
        counts: dict[tuple[type[CustomerEvent], str], int] = {}
        """(event class, result) -> events: one counter increment per label set and batch, not per event."""
        redelivered = 0
        scored: list[tuple[WriteOp, Scores | None, bool]] = []
        for (cid, events), h, rec in zip(by_customer.items(), keys, records, strict=True):
            op, was_live, skipped = self._fold_customer(cid, h, rec, events, out, counts)
            redelivered += skipped
            if op is not None:
                scored.append((op, rec.scores if was_live else None, was_live))
        for (kind, outcome), n in counts.items():
            _applied_counter(kind.__struct_config__.tag, outcome).inc(n)
        if redelivered:
            metrics.DUPLICATES.labels("redelivered").inc(redelivered)
        self._score(scored, out, now)
        return out

    def _fold_customer(
        self,
        cid: str,
        h: str,
        rec: CustomerRecord,
        events: list[Pending],
        out: Plan,
        counts: dict[tuple[type[CustomerEvent], str], int],
    ) -> tuple[WriteOp | None, bool, int]:
        """(the customer's write or None when nothing changed, was it live before, redelivered events)."""
        snap = rec.snapshot
        was_live = snap is not None and bool(snap.customer_id)
        old_phones = snap.phone_keys if snap is not None else _NO_KEYS
        old_emails = snap.email_keys if snap is not None else _NO_KEYS
        before = totals(snap) if snap is not None and was_live else NO_TOTALS
        kpi: dict[str, float] = {}
        marks = dict(rec.marks)
        changed = False
        live = was_live
        redelivered = 0
        lateness = self.stream.lateness_s
        for p in events:
            record, event = p.record, p.event
            partition, offset = record.partition, record.offset
            if offset <= marks.get(partition, -1):
                redelivered += 1
                continue
            marks[partition] = offset
            changed = True
            try:
                snap, result = fold(snap, event, lateness_s=lateness, hasher=self.hasher)
            except Exception as exc:  # a bug or an unforeseen value: keep the event, move on
                out.dead.append(Dead(record, "reducer_error", exc))
                _count(counts, type(event), "reducer_error")
                live = snap is not None and bool(snap.customer_id)
                continue
            if result is _APPLIED:
                _count(counts, type(event), "applied")
                self.applied += 1
                now_live = bool(snap.customer_id)
                daily_kpis(kpi, event, created=now_live and not live)
                live = now_live
                continue
            live = bool(snap.customer_id)
            _count(counts, type(event), result.value)
            if result is _TOO_LATE:
                metrics.LATE_EVENTS.inc()
                out.dead.append(Dead(record, "too_late", _TooLate(lateness)))
            elif result is _DUPLICATE:
                metrics.DUPLICATES.labels("event_id").inc()
        if not changed or snap is None or not (snap.customer_id or snap.erased_at):
            # Nothing to keep (only outcomes of an unknown customer): no key for it at all.
            return None, was_live, redelivered
        after = totals(snap) if snap.customer_id else NO_TOTALS
        if after != before:
            for name, value, old in zip(TOTAL_NAMES, after, before, strict=True):
                if value != old:
                    kpi[name] = kpi.get(name, 0.0) + (value - old)
        op = WriteOp(
            customer_key=h,
            expected_marks=rec.raw_marks,
            marks=marks,
            snapshot=snap,
            scores=rec.scores or Scores(),
            old_bin=rec.scores.clv_bin if rec.scores else None,
            index_add=[],
            index_remove=[],
            kpi=kpi,
            partition=events[-1].record.partition,
        )
        self._index_changes(op, cid, old_phones, old_emails)
        return op, was_live, redelivered

    def _index_changes(self, op: WriteOp, cid: str, old_phones: list[str], old_emails: list[str]) -> None:
        """The phone and e-mail index entries to add and remove (only profile events change them)."""
        new_phones, new_emails = op.snapshot.phone_keys, op.snapshot.email_keys
        if new_phones == old_phones and new_emails == old_emails:
            return
        keys = self.keys
        op.index_add = [(keys.phone(k), cid) for k in new_phones if k not in old_phones] + [
            (keys.email(k), cid) for k in new_emails if k not in old_emails
        ]
        op.index_remove = [(keys.phone(k), cid) for k in old_phones if k not in new_phones] + [
            (keys.email(k), cid) for k in old_emails if k not in new_emails
        ]

    # -- 3. score ----------------------------------------------------------------------------

    def rescore(self, keys: Sequence[str], records: Sequence[CustomerRecord], partition: int, now: int) -> Plan:
        """Score customers again without an event: their stored score is due (see :mod:`router.ingest.sweep`).

        Each op writes only the scores, with the offsets the record was read with plus one in
        :data:`~router.state.records.SWEEP_MARK`: whoever read the record before loses their
        compare-and-set, and a redelivered sweep derives the same alert id. A record that is gone
        or erased gets an op that only takes it out of the due index (``due_at`` None, no scores).
        """
        out = Plan()
        scored: list[tuple[WriteOp, Scores | None, bool]] = []
        for h, rec in zip(keys, records, strict=True):
            snap = rec.snapshot
            prev = rec.scores
            if snap is None or not snap.customer_id or (prev is not None and prev.partition not in (-1, partition)):
                # Nothing to score, or the customer's events now come from another partition (partitions
                # were added) whose owner rescores it: only this due index entry goes (if nothing changed).
                out.ops.append(_unindex_op(h, rec, partition))
                continue
            marks = dict(rec.marks)
            marks[SWEEP_MARK] = marks.get(SWEEP_MARK, 0) + 1
            op = WriteOp(
                customer_key=h,
                expected_marks=rec.raw_marks,
                marks=marks,
                snapshot=snap,
                scores=prev or Scores(),
                old_bin=prev.clv_bin if prev else None,
                index_add=[],
                index_remove=[],
                kpi={},
                partition=partition,
            )
            scored.append((op, prev, True))
        self._score(scored, out, now)
        return out

    def _score(self, scored: list[tuple[WriteOp, Scores | None, bool]], out: Plan, now: int) -> None:
        """Score every live customer of ``scored`` (op, previous scores, was live) in one model call."""
        out.ops.extend(op for op, _, _ in scored)
        for op, prev, was_live in scored:
            if not op.snapshot.customer_id:  # erased: a tombstone has no scores and leaves the histograms
                op.scores = Scores(scored_at=now)
                op.due_at = None
                if was_live and prev is not None:
                    move_score_kpis(op.kpi, (prev.churn, prev.clv, prev.support_cost), None)
        live = [(op, prev) for op, prev, _ in scored if op.snapshot.customer_id]
        if not live:
            return
        model = self.model
        settings, prices = self.scoring, self.prices
        max_age = self.stream.sweep_max_age_s
        snaps = [op.snapshot for op, _ in live]
        as_of = [max(now, snap.last_event_at) for snap in snaps]
        feats = [features(snap, t) for snap, t in zip(snaps, as_of, strict=True)]
        exact = np.asarray(feats, dtype=np.float64)
        rows = exact.astype(np.float32)  # what the model sees, as np.asarray(feats, np.float32) rounds them
        churn: Sequence[float] | None = None
        valid_until: Sequence[int] | None = None
        if model is not None:
            t0 = time.perf_counter()
            try:
                churn = model.predict(rows).tolist()
                out.rows = rows
            except ModelError as exc:
                log.error("churn model failed on a batch: %s", exc)
            metrics.MODEL_SECONDS.labels("consumer").observe(time.perf_counter() - t0)
            if churn is not None:
                valid_until = model.stable_until_many(snaps, exact, as_of)  # one pass for the batch
        model_id = model.model_id if model is not None else ""
        threshold = self.stream.churn_alert_threshold
        rearm = threshold - self.stream.alert_rearm_margin
        for i, (op, prev) in enumerate(live):
            p = churn[i] if churn is not None else (prev.churn if prev else 0.0)
            row = feats[i]  # CLV from the unrounded features, as the request path computes it
            # Only the CLV is stored: its part of the one score assembly (assess), not the whole set.
            clv = clv_parts(snaps[i], row, p, settings, prices)
            value = clv.value
            cost = clv.support_cost_per_year
            was_alerted = prev.alerted if prev else False
            alerted = p >= threshold or (was_alerted and p > rearm)
            if alerted and not was_alerted and churn is not None and model is not None:
                out.alerts.append(self._alert(model, op, row, p, threshold))
                alert_kpis(op.kpi, now)
            scores = op.scores = Scores(
                churn=p, clv=value, clv_bin=clv_bin(value), alerted=alerted, scored_at=now, support_cost=cost,
                partition=op.partition,
            )  # fmt: skip
            if valid_until is not None:  # the model's own answer: reusable until valid_until
                scores.model_id = model_id
                scores.as_of = as_of[i]
                scores.valid_until = valid_until[i]
            op.due_at = due_time(scores, max_age)
            move_score_kpis(op.kpi, (prev.churn, prev.clv, prev.support_cost) if prev else None, (p, value, cost))

    def _alert(self, model: ChurnModel, op: WriteOp, row: list[float], churn: float, threshold: float) -> ChurnAlert:
        # Derived from the offsets that caused the crossing: a redelivered alert has the same id.
        marks = ",".join(f"{p}:{o}" for p, o in sorted(op.marks.items()))
        return ChurnAlert(
            alert_id=self.hasher.digest("alert", f"{op.customer_key}|{marks}")[:24],
            customer_id=op.snapshot.customer_id,
            churn_risk=round(churn * 100, 1),
            threshold=round(threshold * 100, 1),
            crossed_at=datetime.now(UTC),
            reasons=[f.phrase for f in model.explain(row, top=3)],
            model_version=model.version,
        )


def _unindex_op(h: str, rec: CustomerRecord, partition: int) -> WriteOp:
    """A write that only takes the customer out of ``partition``'s due index (if its offsets did not change)."""
    return WriteOp(
        customer_key=h,
        expected_marks=rec.raw_marks,
        marks=rec.marks,
        snapshot=rec.snapshot or _NOBODY,
        scores=rec.scores or Scores(),
        old_bin=None,
        index_add=[],
        index_remove=[],
        partition=partition,
        due_at=None,
    )


_NOBODY = Snapshot()


@functools.cache
def _applied_counter(etype: str | int | None, result: str) -> Counter:
    # label lookup costs ~2 us; per event that is a tenth of the fold, so resolve each child once
    return metrics.EVENTS_APPLIED.labels(str(etype), result)


def _count(counts: dict[tuple[type[CustomerEvent], str], int], kind: type[CustomerEvent], result: str) -> None:
    key = (kind, result)
    counts[key] = counts.get(key, 0) + 1


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def _safe_message(error: BaseException) -> str:
    """The error's message without the values it quotes: they can be a phone number or an e-mail."""
    return _QUOTED.sub("'…'", str(error))[:500]


class _FromFuture(Exception):
    def __init__(self, max_future_s: int) -> None:
        super().__init__(f"event time is more than {max_future_s} s ahead of the consumer's clock")


class _TooLate(Exception):
    def __init__(self, lateness_s: int) -> None:
        super().__init__(f"event time is more than {lateness_s} s before the customer's newest event")


def _decode(rec: Record, dead: list[Dead]) -> CustomerEvent | None:
    if rec.value is None:
        dead.append(Dead(rec, "empty_value", ValueError("record has no value")))
        return None
    try:
        return event_decoder.decode(rec.value)
    except msgspec.ValidationError as exc:
        dead.append(Dead(rec, "schema_invalid", exc))
    except msgspec.DecodeError as exc:
        dead.append(Dead(rec, "undecodable", exc))
    metrics.EVENTS_APPLIED.labels("unknown", "dead_lettered").inc()
    return None
