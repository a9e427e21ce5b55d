"""The state consumer: Kafka events -> reducer -> Redis, with exactly-once effect.

Delivery from Kafka is at-least-once. The effect on Redis is exactly-once because every
customer's hash stores, next to its snapshot, the offsets (per partition) of the last
events folded into it, and one Lua script writes snapshot, offsets and histogram entry
atomically *if the stored offsets are still the ones we read* (compare-and-set):

* a redelivered event has an offset at or below the stored one and is skipped;
* a zombie consumer that lost its partition in a rebalance loses the compare-and-set;
* a producer retry (same ``event_id``, new offset) is caught by the reducer's event-id set.

Partition offsets are also stored in Redis (after the snapshots they cover) and used to
seek on assignment; committing them to Kafka as well only serves lag monitoring.
Poison events go to the dead-letter topic *before* the batch's offsets advance.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import signal
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord
from prometheus_client import Counter

from router.churn.model import ChurnModel, Comparison, ModelError, compare
from router.core.features import features
from router.core.identity import IdentityHasher
from router.core.reducer import DAY, Applied, Snapshot, fold
from router.core.scoring import clv, clv_bin
from router.ingest.health import HealthServer
from router.ops import metrics
from router.ops.heap import settle_heap
from router.ops.kafka import consumer_config, producer_config
from router.ops.logs import setup_logging
from router.settings import Settings
from router.state.store import CustomerRecord, Scores, StateStore, WriteOp, connect, decode_record
from schemas.alerts import ChurnAlert
from schemas.events import CustomerEvent, SubscriptionChanged, event_decoder

__all__ = ["RecordCache", "StateConsumer", "consumer_stack", "run_consumer"]

log = logging.getLogger("router.ingest.consumer")

_MAX_CAS_RETRIES = 5
_SHADOW_REPORT_S = 10.0
_COMMIT_INTERVAL_S = 1.0
_SHADOW_ROWS = 20_000
_alert_encoder = msgspec.json.Encoder()
_CACHE_HITS = metrics.RECORD_CACHE.labels("hit")
_CACHE_MISSES = metrics.RECORD_CACHE.labels("miss")


@dataclass(slots=True)
class _Pending:
    record: ConsumerRecord[bytes, bytes]
    event: CustomerEvent


@dataclass(slots=True)
class _Dead:
    record: ConsumerRecord[bytes, bytes]
    reason: str
    error: BaseException


@dataclass(slots=True)
class _Outcome:
    ops: list[WriteOp] = field(default_factory=list)
    alerts: list[ChurnAlert] = field(default_factory=list)
    dead: list[_Dead] = field(default_factory=list)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Only delegates: revoked -> commit, assigned -> seek to the offsets stored with the state."""

    def __init__(self, owner: StateConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self._owner.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        await self._owner.on_assigned(assigned)


class StateConsumer:
    """Folds the events topic into Redis. Built by :func:`run_consumer` or by tests."""

    def __init__(
        self,
        settings: Settings,
        store: StateStore,
        model: ChurnModel | None,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        shadow: ChurnModel | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.model = model
        self.consumer = consumer
        self.producer = producer
        self.hasher = store.hasher
        self.offsets_key = store.keys.offsets(settings.kafka.group_id, settings.kafka.events_topic)
        self.last_poll = 0.0
        self.assigned: set[TopicPartition] = set()
        self.applied = 0
        self.lag = 0
        self.shadow = shadow
        self._to_commit: dict[TopicPartition, int] = {}
        self._state_written = False
        """True once offsets were stored in Redis: their disappearance then means Redis lost the state."""
        self._committed_at = 0.0
        self._shadow_rows: list[np.ndarray[Any, np.dtype[np.float32]]] = []
        self.cache = RecordCache(settings.stream.cache_customers)
        self._shadow_reported = 0.0

    # -- rebalance -------------------------------------------------------------------------

    async def on_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        # Batches complete before the next poll, so the state is already written: just commit.
        self.assigned.difference_update(revoked)
        self.cache.clear()  # another member may write these customers now
        for tp in revoked:  # another member reports these now; a stale gauge would double the lag
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_LAG.remove(str(tp.partition))
        with contextlib.suppress(Exception):
            await self.consumer.commit()

    async def on_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self.assigned.update(assigned)
        self.cache.clear()
        stored = await self.store.stored_offsets(self.settings.kafka.group_id, self.settings.kafka.events_topic)
        fresh = []
        for tp in assigned:
            if tp.partition in stored:
                self.consumer.seek(tp, stored[tp.partition])
            else:
                fresh.append(tp)
        if fresh:
            # The state lives in Redis: no offsets stored there means no state, whatever Kafka's
            # committed offsets say. Build it from the start of the retained log.
            await self.consumer.seek_to_beginning(*fresh)
        self._state_written = bool(stored)

    # -- main loop -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Poll, fold, write, commit until ``stop`` is set; a failed batch is retried from its start."""
        stream = self.settings.stream
        backoff = 0.2
        while not stop.is_set():
            batch = await self.consumer.getmany(timeout_ms=stream.poll_timeout_ms, max_records=stream.batch_max)
            self.last_poll = time.time()
            metrics.LAST_POLL.set(self.last_poll)
            if not batch:
                if self._to_commit:  # idle: let Kafka's lag view catch up with what Redis already has
                    with contextlib.suppress(Exception):
                        await self.commit()
                await self._report_lag()
                continue
            try:
                await self.process_batch(batch)
                backoff = 0.2
            except Exception as exc:  # infrastructure fault: rewind and retry, never skip
                self.cache.clear()  # folds may have changed cached snapshots that were never written
                log.warning("batch failed, will retry: %s", type(exc).__name__, exc_info=exc)
                for tp, records in batch.items():
                    if tp in self.assigned:
                        self.consumer.seek(tp, records[0].offset)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            await self._report_lag()
        if self.shadow is not None:
            with contextlib.suppress(Exception):  # best effort on the way out
                await self.report_shadow()

    async def _report_lag(self) -> None:
        lag = 0
        for tp in list(self.assigned):
            high = self.consumer.highwater(tp)
            if high is None:
                continue
            with contextlib.suppress(Exception):
                behind = max(0, high - await self.consumer.position(tp))
                metrics.CONSUMER_LAG.labels(str(tp.partition)).set(behind)
                lag += behind
        self.lag = lag

    async def commit(self) -> None:
        """Commit to Kafka the offsets whose state is already in Redis."""
        pending = {tp: o for tp, o in self._to_commit.items() if tp in self.assigned}
        self._to_commit = {}
        self._committed_at = time.monotonic()
        if pending:
            await self.consumer.commit(pending)

    def ready(self) -> tuple[bool, str]:
        """Readiness: polled recently (not stuck) and owning partitions or idle in the group."""
        if not self.last_poll:
            return False, "not polled yet"
        silent = time.time() - self.last_poll
        if silent > self.settings.stream.stuck_after_s:
            return False, f"stuck: no successful poll for {silent:.0f} s"
        model = f"model {self.model.version}" if self.model else "model missing (scores keep their last values)"
        return True, f"ok: {len(self.assigned)} partitions, lag {self.lag}, {model}"

    async def process_batch(self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        """Fold one polled batch into Redis; returns when state, dead letters and commit are done."""
        if self._state_written and not await self.store.client.exists(self.offsets_key):
            # Redis came back empty (a restart without persistence, a flush): folding on would write
            # snapshots of the newer events only. Replay the retained log instead.
            log.warning("Redis lost the consumer state; replaying partitions from the beginning")
            metrics.STATE_RESETS.inc()
            self._state_written = False
            self.cache.clear()
            await self.consumer.seek_to_beginning(*self.assigned)
            return
        metrics.BATCH_SIZE.observe(sum(len(r) for r in batch.values()))
        lanes: list[dict[str, list[_Pending]]] = [{} for _ in range(max(1, self.settings.stream.lanes))]
        dead: list[_Dead] = []
        next_offsets: dict[int, int] = {}
        horizon = time.time() + self.settings.stream.max_future_s
        for tp, records in batch.items():
            next_offsets[tp.partition] = records[-1].offset + 1
            for rec in records:
                event = _decode(rec, dead)
                if event is not None and event.occurred_at.timestamp() > horizon:
                    # Lateness counts back from the newest event time: one event from 2100 would
                    # make every real event "too late" until 2100.
                    dead.append(_Dead(rec, "from_future", _FromFuture(self.settings.stream.max_future_s)))
                    event = None
                if event is not None:
                    cid = event.customer_id
                    lanes[hash(cid) % len(lanes)].setdefault(cid, []).append(_Pending(rec, event))
        if dead:
            await self._publish(_Outcome(dead=dead))
        # Lanes hold disjoint customers: while one waits for Redis, another folds. Each lane's
        # compare-and-set covers its own customers; the partition offsets are stored after all.
        results = await asyncio.gather(*(self._apply_lane(lane) for lane in lanes if lane), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        await self.store.store_offsets({self.offsets_key: next_offsets})
        self._state_written = True
        for tp in batch:
            if tp in self.assigned:
                self._to_commit[tp] = next_offsets[tp.partition]
        # Kafka commits only feed lag monitoring (the offsets that count are stored with the state),
        # so one commit a second is enough and saves a broker round trip per batch.
        if self._to_commit and time.monotonic() - self._committed_at >= _COMMIT_INTERVAL_S:
            await self.commit()
        if self.shadow is not None and time.monotonic() - self._shadow_reported > _SHADOW_REPORT_S:
            await self.report_shadow()

    async def _apply_lane(self, pending: dict[str, list[_Pending]]) -> None:
        """Fold one lane's customers and write them; refold the ones another writer got to first."""
        for _ in range(_MAX_CAS_RETRIES):
            outcome = await self._fold(pending)
            await self._publish(outcome)
            ok = await self.store.apply(outcome.ops)
            lost = set()
            for op, good in zip(outcome.ops, ok, strict=True):
                if good:
                    self.cache.put(op)
                else:  # not put back (taken out when read): the retry reads what the other writer stored
                    lost.add(op.customer_key)
            if not lost:
                return
            # Another writer (a zombie from before a rebalance) got in between: read again, refold.
            metrics.DUPLICATES.labels("cas_conflict").inc(len(lost))
            pending = {cid: evs for cid, evs in pending.items() if self.hasher.customer_key(cid) in lost}
        raise RuntimeError("compare-and-set kept failing; another consumer owns these customers")

    async def report_shadow(self) -> Comparison | None:
        """Compare the shadow model with the live one on recently scored customers; store the report."""
        if self.shadow is None or self.model is None or not self._shadow_rows:
            return None
        rows = np.concatenate(self._shadow_rows)[-_SHADOW_ROWS:]
        self._shadow_rows = [rows]
        self._shadow_reported = time.monotonic()
        report = compare(self.model, self.shadow, rows, alert_threshold=self.settings.stream.churn_alert_threshold)
        await self.store.client.set(self.store.keys.shadow_report(), msgspec.json.encode(report))
        log.info(
            "shadow %s vs live %s on %d customers: mean |diff| %.4f, alert agreement %.3f",
            report.candidate_version, report.live_version, report.rows, report.mean_abs_diff, report.alert_agreement,
        )  # fmt: skip
        return report

    async def _fold(self, by_customer: dict[str, list[_Pending]]) -> _Outcome:
        out = _Outcome()
        ids = list(by_customer)
        customer_key = self.hasher.customer_key
        keys = [customer_key(cid) for cid in ids]
        records = await self._records(keys)
        lateness = self.settings.stream.lateness_s
        hasher = self.hasher
        counts: dict[tuple[type[CustomerEvent], str], int] = {}
        """(event class, result) -> events: one counter increment per label set and batch, not per event."""
        redelivered = 0
        scored: list[tuple[WriteOp, Scores | None, bool]] = []
        for cid, h, rec in zip(ids, keys, records, strict=True):
            # Freshly decoded or taken out of the cache: folding may mutate it, nothing else holds it.
            snap = rec.snapshot
            was_live = snap is not None and bool(snap.customer_id)
            old_phones = snap.phone_keys if snap is not None else _NO_KEYS
            old_emails = snap.email_keys if snap is not None else _NO_KEYS
            before = _totals(snap) if snap is not None and was_live else _NO_TOTALS
            kpi: dict[str, float] = {}
            marks = dict(rec.marks)
            changed = False
            live = was_live
            for p in by_customer[cid]:
                record, event = p.record, p.event
                partition, offset = record.partition, record.offset
                if offset <= marks.get(partition, -1):
                    redelivered += 1
                    continue
                marks[partition] = offset
                changed = True
                try:
                    snap, result = fold(snap, event, lateness_s=lateness, hasher=hasher)
                except Exception as exc:  # a bug or an unforeseen value: keep the event, move on
                    out.dead.append(_Dead(record, "reducer_error", exc))
                    _count(counts, type(event), "reducer_error")
                    live = snap is not None and bool(snap.customer_id)
                    continue
                if result is _APPLIED:
                    _count(counts, type(event), "applied")
                    self.applied += 1
                    now_live = bool(snap.customer_id)
                    _daily_kpis(kpi, event, created=now_live and not live)
                    live = now_live
                    continue
                live = bool(snap.customer_id)
                _count(counts, type(event), result.value)
                if result is _TOO_LATE:
                    metrics.LATE_EVENTS.inc()
                    out.dead.append(_Dead(record, "too_late", _TooLate(lateness)))
                elif result is _DUPLICATE:
                    metrics.DUPLICATES.labels("event_id").inc()
            if not changed or snap is None:
                continue
            after = _totals(snap) if snap.customer_id else _NO_TOTALS
            if after != before:
                for name, value, old in zip(_TOTAL_NAMES, after, before, strict=True):
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
            )
            new_phones, new_emails = snap.phone_keys, snap.email_keys
            if new_phones != old_phones or new_emails != old_emails:  # only profile events change them
                keys_ = self.store.keys
                op.index_add = [(keys_.phone(k), cid) for k in new_phones if k not in old_phones] + [
                    (keys_.email(k), cid) for k in new_emails if k not in old_emails
                ]
                op.index_remove = [(keys_.phone(k), cid) for k in old_phones if k not in new_phones] + [
                    (keys_.email(k), cid) for k in old_emails if k not in new_emails
                ]
            scored.append((op, rec.scores if was_live else None, was_live))
        for (kind, outcome), n in counts.items():
            _applied_counter(kind.__struct_config__.tag, outcome).inc(n)
        if redelivered:
            metrics.DUPLICATES.labels("redelivered").inc(redelivered)
        self._score(scored, out)
        return out

    async def _records(self, keys: list[str]) -> list[CustomerRecord]:
        """Records of these customers: what this consumer last wrote if cached, else read from Redis."""
        records: list[CustomerRecord | None] = [self.cache.take(h) for h in keys]
        missing = [i for i, rec in enumerate(records) if rec is None]
        _CACHE_HITS.inc(len(keys) - len(missing))
        _CACHE_MISSES.inc(len(missing))
        if missing:
            read = await self.store.read_customers([keys[i] for i in missing])
            for i, rec in zip(missing, read, strict=True):
                records[i] = rec
        return records  # type: ignore[return-value]  # every None was filled

    def _score(self, scored: list[tuple[WriteOp, Scores | None, bool]], out: _Outcome) -> None:
        now = int(time.time())
        out.ops.extend(op for op, _, _ in scored)
        for op, prev, was_live in scored:
            if not op.snapshot.customer_id:  # erased: a tombstone has no scores and leaves the histograms
                op.scores = Scores(scored_at=now)
                if was_live and prev is not None:
                    _move_score_kpis(op.kpi, prev, None)
        live = [(op, prev) for op, prev, _ in scored if op.snapshot.customer_id]
        if not live:
            return
        as_of = [max(now, op.snapshot.last_event_at) for op, _ in live]
        feats = [features(op.snapshot, t) for (op, _), t in zip(live, as_of, strict=True)]
        rows = np.asarray(feats, dtype=np.float32)
        churn: Sequence[float] | None = None
        if self.model is not None:
            t0 = time.perf_counter()
            try:
                churn = self.model.predict(rows).tolist()
            except ModelError as exc:
                log.error("churn model failed on a batch: %s", exc)
            metrics.MODEL_SECONDS.labels("consumer").observe(time.perf_counter() - t0)
        if self.shadow is not None and churn is not None:
            self._shadow_rows.append(rows)
        threshold = self.settings.stream.churn_alert_threshold
        rearm = threshold - self.settings.stream.alert_rearm_margin
        model_settings = self.settings.model
        for i, (op, prev) in enumerate(live):
            p = churn[i] if churn is not None else (prev.churn if prev else 0.0)
            row = feats[i]  # CLV from the unrounded features, as the request path computes it
            value = clv(op.snapshot, row, p, model_settings)
            was_alerted = prev.alerted if prev else False
            alerted = p >= threshold or (was_alerted and p > rearm)
            if alerted and not was_alerted and churn is not None and self.model is not None:
                out.alerts.append(self._alert(op, row, p, threshold))
            op.scores = Scores(churn=p, clv=value, clv_bin=clv_bin(value), alerted=alerted, scored_at=now)
            if churn is not None and self.model is not None:
                op.scores.model_id = self.model.model_id
                op.scores.as_of = as_of[i]
                op.scores.valid_until = self.model.stable_until(op.snapshot, row, as_of[i])
            _move_score_kpis(op.kpi, prev, op.scores)

    def _alert(self, op: WriteOp, row: list[float], churn: float, threshold: float) -> ChurnAlert:
        assert self.model is not None
        marks = ",".join(f"{p}:{o}" for p, o in sorted(op.marks.items()))
        return ChurnAlert(
            alert_id=self.hasher.digest("alert", f"{op.customer_key}|{marks}")[:24],
            customer_id=op.snapshot.customer_id,
            churn_risk=round(churn * 100, 1),
            threshold=round(threshold * 100, 1),
            crossed_at=datetime.now(UTC),
            reasons=[f.phrase for f in self.model.explain(row, top=3)],
            model_version=self.model.version,
        )

    async def _publish(self, out: _Outcome) -> None:
        """Dead letters and alerts, acknowledged by the broker before any state is written."""
        kafka = self.settings.kafka
        futures = []
        for d in out.dead:
            rec = d.record
            headers = [
                ("dlq.origin.topic", rec.topic.encode()),
                ("dlq.origin.partition", str(rec.partition).encode()),
                ("dlq.origin.offset", str(rec.offset).encode()),
                ("dlq.error.reason", d.reason.encode()),
                ("dlq.error.class", type(d.error).__name__.encode()),
                ("dlq.error.message", _safe_message(d.error).encode()),
            ]
            futures.append(
                await self.producer.send(
                    kafka.dead_letter_topic,
                    value=rec.value,
                    key=rec.key,
                    timestamp_ms=rec.timestamp if rec.timestamp and rec.timestamp > 0 else None,
                    headers=headers,
                )
            )
            metrics.DEAD_LETTERED.labels(d.reason).inc()
            log.warning(
                "dead-lettered %s:%d@%d reason=%s error=%s",
                rec.topic,
                rec.partition,
                rec.offset,
                d.reason,
                type(d.error).__name__,
            )
        for alert in out.alerts:
            futures.append(
                await self.producer.send(
                    kafka.alerts_topic, value=_alert_encoder.encode(alert), key=alert.customer_id.encode()
                )
            )
        if futures:
            await asyncio.gather(*futures)
            metrics.ALERTS.inc(len(out.alerts))


class RecordCache:
    """The records this consumer wrote last, for its next events of the same customers.

    Safe because every write is a compare-and-set on the stored offsets: if anyone else wrote
    a customer since (a member that took the partition over), the next write from a stale
    entry fails and the customer is read from Redis again. Entries are the bytes that were
    stored, decoded when taken: no shared mutable snapshot, and nothing for the cyclic
    collector to walk (20k cached snapshot objects cost more in collections than the reads
    they saved). A customer that lost its compare-and-set is not put back; a failed batch or a
    rebalance clears everything. Least recently written entries go first.
    """

    __slots__ = ("_entries", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # OrderedDict: evicting the oldest entry of a plain dict scans past every hole that earlier
        # evictions left at its front (quadratic; it made the cache slower than Redis reads)
        self._entries: OrderedDict[str, tuple[bytes, bytes, bytes]] = OrderedDict()

    def take(self, customer_key: str) -> CustomerRecord | None:
        """The cached record, removed from the cache (a successful write puts it back)."""
        stored = self._entries.pop(customer_key, None)
        return None if stored is None else decode_record(stored)

    def put(self, op: WriteOp) -> None:
        """Remember what a successful write stored."""
        if self.capacity <= 0 or op.stored is None:
            return
        entries = self._entries
        entries[op.customer_key] = op.stored
        if len(entries) > self.capacity:
            entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


@functools.cache
def _applied_counter(etype: str | int | None, result: str) -> Counter:
    # label lookup costs ~2 us; per event that is a tenth of the fold, so resolve each child once
    return metrics.EVENTS_APPLIED.labels(str(etype), result)


def _count(counts: dict[tuple[type[CustomerEvent], str], int], kind: type[CustomerEvent], result: str) -> None:
    key = (kind, result)
    counts[key] = counts.get(key, 0) + 1


_NO_KEYS: list[str] = []
_APPLIED, _TOO_LATE, _DUPLICATE = Applied.APPLIED, Applied.TOO_LATE, Applied.DUPLICATE
_TOTAL_NAMES = ("customers", "active_subscriptions", "mrr", "cac_sum")
_NO_TOTALS = (0.0, 0.0, 0.0, 0.0)


def _totals(snap: Snapshot) -> tuple[float, float, float, float]:
    """The snapshot's contribution to the portfolio totals."""
    active = snap.subscription == "active"
    return (1.0, 1.0 if active else 0.0, max(0, snap.mrr_cents) / 100.0 if active else 0.0, snap.acquisition_cost)


def _daily_kpis(kpi: dict[str, float], event: CustomerEvent, *, created: bool) -> None:
    """Per-day portfolio counters of an applied event (by event day)."""
    sub = event if isinstance(event, SubscriptionChanged) else None
    if not created and sub is None:
        return  # most events: nothing to count
    day = int(event.occurred_at.timestamp()) // DAY
    if created:
        _add(kpi, f"d:{day}:new_customers", 1.0)
    if sub is not None:
        change = sub.change
        if change == "new":
            _add(kpi, f"d:{day}:new_subscriptions", 1.0)
            _add(kpi, f"d:{day}:new_mrr", sub.mrr_delta)
        elif change in ("upgrade", "add_on"):
            _add(kpi, f"d:{day}:expansion_mrr", sub.mrr_delta)
        elif change == "downgrade":
            _add(kpi, f"d:{day}:contraction_mrr", -sub.mrr_delta)
        elif change == "cancel":
            _add(kpi, f"d:{day}:cancellations", 1.0)
            _add(kpi, f"d:{day}:churned_mrr", -sub.mrr_delta)


def _move_score_kpis(kpi: dict[str, float], old: Scores | None, new: Scores | None) -> None:
    """Keep the CLV sum and the churn-risk histogram (20 bins of 5 points) in step with the scores."""
    clv_delta = (new.clv if new else 0.0) - (old.clv if old else 0.0)
    if clv_delta:
        _add(kpi, "clv_sum", clv_delta)
    old_bin = min(19, int(old.churn * 20)) if old else None
    new_bin = min(19, int(new.churn * 20)) if new else None
    if old_bin != new_bin:
        if old_bin is not None:
            _add(kpi, f"cb:{old_bin}", -1.0)
        if new_bin is not None:
            _add(kpi, f"cb:{new_bin}", 1.0)


def _add(kpi: dict[str, float], field: str, delta: float) -> None:
    kpi[field] = kpi.get(field, 0.0) + delta


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


def _decode(rec: ConsumerRecord[bytes, bytes], dead: list[_Dead]) -> CustomerEvent | None:
    if rec.value is None:
        dead.append(_Dead(rec, "empty_value", ValueError("record has no value")))
        return None
    try:
        return event_decoder.decode(rec.value)
    except msgspec.ValidationError as exc:
        dead.append(_Dead(rec, "schema_invalid", exc))
    except msgspec.DecodeError as exc:
        dead.append(_Dead(rec, "undecodable", exc))
    metrics.EVENTS_APPLIED.labels("unknown", "dead_lettered").inc()
    return None


async def run_consumer(settings: Settings) -> None:
    """Run one consumer process until SIGINT/SIGTERM; each resource opens and closes in order."""
    setup_logging(settings.api.log_level)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with consumer_stack(settings) as worker:
        settle_heap()
        task = asyncio.create_task(worker.run(stop), name="state-consumer")
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        stopper.cancel()
        try:
            await asyncio.wait_for(task, 10)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if task in done and task.exception():
            raise task.exception()  # type: ignore[misc]


@contextlib.asynccontextmanager
async def consumer_stack(settings: Settings) -> AsyncIterator[StateConsumer]:
    hasher = IdentityHasher(settings.identity.hash_key.encode(), settings.identity.default_region)
    client = connect(settings.redis.url, cluster=settings.redis.cluster, timeout_s=5.0)
    store = StateStore(client, settings.redis.prefix, hasher)
    model: ChurnModel | None
    try:
        model = ChurnModel.load(settings.model.path)
    except ModelError as exc:
        log.error("churn model unavailable, scores keep their last values: %s", exc)
        model = None
    metrics.MODEL_LOADED.set(1 if model else 0)
    if model is not None:
        metrics.MODEL_INFO.info({"version": model.version, "path": settings.model.path})
    shadow: ChurnModel | None = None
    if settings.model.shadow_path:
        try:
            shadow = ChurnModel.load(settings.model.shadow_path)
            log.info("shadow model %s scored beside live %s", shadow.version, model.version if model else "none")
        except ModelError as exc:
            log.error("shadow model not loaded: %s", exc)
    kafka = settings.kafka
    producer = AIOKafkaProducer(**producer_config(kafka))
    consumer = AIOKafkaConsumer(
        **consumer_config(kafka),
        # bigger fetches make bigger batches: per-batch costs (round trips) amortise over more events
        fetch_min_bytes=64 * 1024,
        fetch_max_wait_ms=50,
        session_timeout_ms=kafka.session_timeout_ms,
        heartbeat_interval_ms=max(100, kafka.session_timeout_ms // 4),
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    worker = StateConsumer(settings, store, model, consumer, producer, shadow)
    consumer.subscribe([kafka.events_topic], listener=_Rebalance(worker))
    health = HealthServer(settings.stream.health_host, settings.stream.health_port, worker.ready)
    try:
        await producer.start()
        await consumer.start()
        await health.start()
        yield worker
    finally:
        await health.stop()
        with contextlib.suppress(Exception):
            await worker.commit()
        await consumer.stop()
        await producer.stop()
        await client.aclose()
