"""The state consumer's loop: poll, seek, apply, publish, commit. Exactly-once effect on Redis.

Delivery from Kafka is at-least-once. The effect on Redis is exactly-once because every
customer's hash stores, next to its snapshot, the offsets (per partition) of the last
events folded into it, and one Lua script writes snapshot, offsets and histogram entry
atomically *if the stored offsets are still the ones we read* (compare-and-set):

* a redelivered event has an offset at or below the stored one and is skipped;
* a zombie consumer that lost its partition in a rebalance loses the compare-and-set;
* a producer retry (same ``event_id``, new offset) is caught by the reducer's event-id set.

Partition offsets are also stored in Redis (after the snapshots they cover) and used to
seek on assignment; committing them to Kafka as well only serves lag monitoring. Every batch
first reads the stored offsets of its partitions (one HMGET): one that is missing or behind what
this consumer stored last means Redis lost state (a restart without persistence, a flush, a
failover to a lagging replica, a lost AOF tail), and that partition is replayed from the stored
offset, or from the start of the log. Each consumer checks its own partitions, so one noticing
first hides nothing from the others.

Poison events go to the dead-letter topic *before* the batch's offsets advance, and churn
alerts before the state that raised them is written; both are remembered as published (in
Redis with a TTL, and in memory while Redis is down), so a batch retried after a Redis fault,
or redelivered to a restarted consumer, publishes each at most once. What a batch does to each
customer is decided without I/O by :class:`~router.ingest.planning.BatchPlanner`.
Beside the poll loop, two supervised tasks: the sweep (:mod:`router.ingest.sweep`) rescores the
customers of this consumer's partitions whose score is due, and the follower
(:mod:`router.state.follow`) swaps in the model and cost-to-serve prices the fleet was told to use.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import signal
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import msgspec
import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord

from router.churn.model import ChurnModel, Comparison, ModelError, compare
from router.core.identity import IdentityHasher
from router.core.scoring import NO_SERVICE_COST, ServicePrices
from router.ingest.cache import RecordCache
from router.ingest.health import HealthServer
from router.ingest.planning import BatchPlanner, Dead, Pending, Plan
from router.ingest.sweep import Sweeper
from router.ops import metrics
from router.ops.heap import settle_heap
from router.ops.kafka import consumer_config, producer_config
from router.ops.logs import setup_logging
from router.policy.spec import PolicyError, parse_policy_text, read_policy_file
from router.settings import Settings, require_safe
from router.state.follow import Follower
from router.state.policies import STORED_VERSION_PREFIX, PolicyVersions
from router.state.probe import RedisProbe
from router.state.records import CustomerRecord
from router.state.store import StateStore, connect_redis
from schemas.alerts import ChurnAlert

__all__ = ["StateConsumer", "consumer_stack", "run_consumer"]

log = logging.getLogger("router.ingest.consumer")

_MAX_CAS_RETRIES = 5
_SHADOW_REPORT_S = 10.0
_COMMIT_INTERVAL_S = 1.0
_SHADOW_ROWS = 20_000
_PUBLISHED_TTL_S = 7 * 86_400
"""How long Redis remembers a published dead letter or alert (longer than any retry or restart)."""
_PUBLISHED_IN_MEMORY = 100_000
_alert_encoder = msgspec.json.Encoder()
_CACHE_HITS = metrics.RECORD_CACHE.labels("hit")
_CACHE_MISSES = metrics.RECORD_CACHE.labels("miss")


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
        prices: ServicePrices = NO_SERVICE_COST,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.consumer = consumer
        self.producer = producer
        self.hasher = store.hasher
        self.clock = clock
        """Epoch seconds "now" for scoring (tests move it to show what the passing of time does)."""
        self.planner = BatchPlanner(settings.stream, settings.model, store.hasher, store.keys, model, prices)
        self.sweeper = Sweeper(self)
        self.next_model: ChurnModel | None = None
        """A reloaded model, swapped in between two batches by the poll loop."""
        self.next_prices: ServicePrices | None = None
        """Reloaded cost-to-serve prices, swapped in like the model."""
        self.policy_sha = ""
        """SHA-256 of the policy file the cost-to-serve prices come from."""
        self.offsets_key = store.keys.offsets(settings.kafka.group_id, settings.kafka.events_topic)
        self.last_poll = 0.0
        self._alive_at = 0.0
        """Last time the loop finished something: a poll, or a batch attempt (written or failed)."""
        self._busy = False
        """A batch attempt is running (waiting for Redis or the broker, both bounded by timeouts)."""
        self.probe: RedisProbe | None = None
        self.assigned: set[TopicPartition] = set()
        self.lag = 0
        self.shadow = shadow
        self._to_commit: dict[TopicPartition, int] = {}
        self._stored: dict[TopicPartition, int | None] = {}
        """What this consumer knows Redis holds as each owned partition's next offset (None: nothing
        stored yet). Less in Redis than this means Redis lost state. No entry: not placed yet."""
        self._published: OrderedDict[str, None] = OrderedDict()
        """Marker keys of dead letters and alerts this process published (newest last, bounded)."""
        self._committed_at = 0.0
        self._committing: asyncio.Task[None] | None = None
        """The Kafka commit running beside the poll loop (at most one)."""
        self._shadow_rows: list[np.ndarray[Any, np.dtype[np.float32]]] = []
        self.cache = RecordCache(settings.stream.cache_customers)
        self._shadow_reported = 0.0
        self._reloads: set[asyncio.Task[None]] = set()

    @property
    def model(self) -> ChurnModel | None:
        return self.planner.model

    # -- reloads (SIGHUP, or what an admin reload announced: router.state.follow) ----------------

    async def load_model(self, path: str, sha256: str | None = None) -> ChurnModel:
        """Load a model off the event loop; the poll loop swaps it in between two batches."""
        model = await asyncio.to_thread(functools.partial(ChurnModel.load, path, business=self.settings.model.business))
        if sha256 is not None and model.sha256 != sha256:
            raise ModelError(f"{path} is not the announced file (sha256 {model.sha256[:12]}.. != {sha256[:12]}..)")
        self.next_model = model
        return model

    async def load_prices(self, path: str, sha256: str | None = None) -> None:
        """Take the cost-to-serve prices from a policy file, or a version the console stored
        (``version:N``); the rest of the policy is the API's."""
        if path.startswith(STORED_VERSION_PREFIX):
            number = int(path.removeprefix(STORED_VERSION_PREFIX))
            stored = await PolicyVersions(self.store.client, self.store.keys).get(number)
            if stored is None:
                raise PolicyError(f"policy version {number} is announced but not stored")
            spec = parse_policy_text(stored.text, f"policy version {number}")
            digest = hashlib.sha256(stored.text.encode()).hexdigest()
        else:
            spec, digest = await asyncio.to_thread(read_policy_file, path)
        if sha256 is not None and digest != sha256:
            raise PolicyError(f"{path} is not the announced file (sha256 {digest[:12]}.. != {sha256[:12]}..)")
        self.next_prices = spec.service_cost.prices()
        self.policy_sha = digest
        log.info("cost-to-serve prices from policy %s", spec.version)

    def on_sighup(self) -> None:
        """Reload model and prices from their configured files (like the API's SIGHUP); log, never raise."""
        task = asyncio.get_running_loop().create_task(self._reload_configured(), name="sighup-reload")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _reload_configured(self) -> None:
        try:
            await self.load_model(self.settings.model.path)
        except Exception as exc:  # ModelError, or a card the loader trips over
            log.error(
                "SIGHUP: model not loaded, %s stays in force: %s", self.model.version if self.model else "none", exc
            )
        try:
            await self.load_prices(self.settings.policy.path)
        except (PolicyError, UnicodeDecodeError, OSError) as exc:
            log.error("SIGHUP: policy prices not loaded, the previous ones stay in force: %s", exc)

    def _swap_reloads(self) -> None:
        prices, self.next_prices = self.next_prices, None
        if prices is not None:
            self.planner.prices = prices
        new, self.next_model = self.next_model, None
        if new is None:
            return
        old, self.planner.model = self.planner.model, new
        metrics.MODEL_LOADED.set(1)
        metrics.MODEL_INFO.info({"version": new.version, "path": str(new.path)})
        log.info("churn model %s replaced by %s", old.version if old else "none", new.version)

    @property
    def applied(self) -> int:
        """Events applied since start."""
        return self.planner.applied

    # -- rebalance -------------------------------------------------------------------------

    async def on_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        # Batches complete before the next poll, so the state is already written: just commit.
        self.assigned.difference_update(revoked)
        for tp in revoked:
            self._stored.pop(tp, None)
        self.cache.clear()  # another member may write these customers now
        for tp in revoked:  # another member reports these now; a stale gauge would double the lag
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_LAG.remove(str(tp.partition))
        with contextlib.suppress(Exception):
            await self.consumer.commit()

    async def on_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self.assigned.update(assigned)
        self.cache.clear()
        kafka = self.settings.kafka
        try:
            partitions = [tp.partition for tp in assigned]
            stored = await self.store.stored_offsets_of(kafka.group_id, kafka.events_topic, partitions)
        except Exception as exc:  # Redis down: the first batch of each partition places it (_placed)
            log.warning("stored offsets unreadable on assignment (%s); placing partitions later", type(exc).__name__)
            return
        fresh = []
        for tp in assigned:
            offset = self._stored[tp] = stored[tp.partition]
            if offset is not None:
                self.consumer.seek(tp, offset)
            else:
                fresh.append(tp)
        if fresh:
            # The state lives in Redis: no offsets stored there means no state, whatever Kafka's
            # committed offsets say. Build it from the start of the retained log.
            await self.consumer.seek_to_beginning(*fresh)

    # -- main loop -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Poll, fold, write, commit until ``stop`` is set; a failed batch is retried from its start.

        The sweep runs beside it as a task of its own, cancelled and awaited on the way out.
        """
        stream = self.settings.stream
        sweep = asyncio.create_task(self.sweeper.run(stop), name="sweep") if stream.sweep_interval_s > 0 else None
        try:
            await self._poll(stop)
        finally:
            if sweep is not None:
                sweep.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweep
            if self._committing is not None:
                await self._committing  # logs its own failure
        if self.shadow is not None:
            with contextlib.suppress(Exception):  # best effort on the way out
                await self.report_shadow()

    async def _poll(self, stop: asyncio.Event) -> None:
        stream = self.settings.stream
        backoff = 0.2
        while not stop.is_set():
            self._swap_reloads()  # between two batches: a batch is scored by one model and one price table
            batch = await self.consumer.getmany(timeout_ms=stream.poll_timeout_ms, max_records=stream.batch_max)
            self.last_poll = self._alive_at = time.time()
            metrics.LAST_POLL.set(self.last_poll)
            if not batch:
                if self._to_commit:  # idle: let Kafka's lag view catch up with what Redis already has
                    with contextlib.suppress(Exception):
                        await self.commit()
                await self._report_lag()
                continue
            self._busy = True  # alive while a batch runs: its Redis and broker calls are bounded by timeouts
            failure: Exception | None = None
            try:
                await self.process_batch(batch)
            except Exception as exc:
                failure = exc
            finally:
                self._busy = False
                self._alive_at = time.time()
            if failure is not None:  # infrastructure fault: rewind and retry, never skip
                self.cache.clear()  # folds may have changed cached snapshots that were never written
                log.warning("batch failed, will retry: %s", type(failure).__name__, exc_info=failure)
                for tp, records in batch.items():
                    if tp in self.assigned:
                        self.consumer.seek(tp, records[0].offset)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                self._alive_at = time.time()
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.2
            await self._report_lag()

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

    def _commit_beside(self) -> None:
        """Start a Kafka commit as a task of its own, one at a time: a batch never waits for the broker's answer."""
        if self._committing is None or self._committing.done():
            self._committing = asyncio.get_running_loop().create_task(self._commit_quietly(), name="kafka-commit")

    async def _commit_quietly(self) -> None:
        pending = dict(self._to_commit)
        try:
            await self.commit()
        except Exception as exc:  # the next commit covers these (lag monitoring only: nothing is lost)
            for tp, offset in pending.items():
                self._to_commit.setdefault(tp, offset)
            log.warning("Kafka commit failed, retried with the next one: %s", type(exc).__name__)

    def ready(self) -> tuple[bool, str]:
        """Readiness: the loop is alive (it polled or finished a batch attempt recently, or one is running).

        Redis is deliberately not part of it. A consumer serves no traffic, so its readiness only
        gates rollouts and the disruption budget; a Redis outage hits every consumer alike, each
        pauses and retries by itself, and nothing is gained by marking them all unready. Redis is
        reported by ``router_redis_up``, the ``RouterRedisDown`` alert and the text of this answer.
        """
        if not self.last_poll:
            return False, "not polled yet"
        silent = time.time() - self._alive_at
        if silent > self.settings.stream.stuck_after_s and not self._busy:
            return False, f"stuck: no successful poll for {time.time() - self.last_poll:.0f} s"
        model = f"model {self.model.version}" if self.model else "model missing (scores keep their last values)"
        redis = f", redis {self.probe.describe()}" if self.probe is not None else ""
        return True, f"ok: {len(self.assigned)} partitions, lag {self.lag}, {model}{redis}"

    async def process_batch(self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        """Fold one polled batch into Redis; returns when state, dead letters and the offsets are stored.

        A small batch (one lane) costs two round trips to Redis: its records are read with the
        placement check, and written with the partition offsets (when every compare-and-set holds
        and the write is one script call); the freshness of the state depends on it.
        """
        # Triage first (no I/O): a single lane's read can then go with the placement check.
        triage = self.planner.triage(batch, self.clock())
        lanes = [lane for lane in triage.lanes if lane]
        first: tuple[list[str], list[CustomerRecord]] | None = None
        if len(lanes) == 1:
            placed, first = await self._placed_and_read(batch, lanes[0])
        else:
            placed = await self._placed(batch)
        if not placed:
            return
        metrics.BATCH_SIZE.observe(sum(len(r) for r in batch.values()))
        if triage.dead:
            await self._publish(Plan(dead=triage.dead))
        next_offsets = triage.next_offsets
        if first is not None:
            stored = await self._apply_lane(lanes[0], first, next_offsets)
        else:
            # Lanes hold disjoint customers: while one waits for Redis, another folds. Each lane's
            # compare-and-set covers its own customers; the partition offsets are stored after all.
            results = await asyncio.gather(*(self._apply_lane(lane) for lane in lanes), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            stored = False
        if not stored:
            await self.store.store_offsets({self.offsets_key: next_offsets})
        for tp in batch:
            self._stored[tp] = next_offsets[tp.partition]
            if tp in self.assigned:
                self._to_commit[tp] = next_offsets[tp.partition]
        # Kafka commits only feed lag monitoring (the offsets that count are stored with the state),
        # so one commit a second is enough, and the next poll need not wait for it.
        if self._to_commit and time.monotonic() - self._committed_at >= _COMMIT_INTERVAL_S:
            self._commit_beside()
        if self.shadow is not None and time.monotonic() - self._shadow_reported > _SHADOW_REPORT_S:
            await self.report_shadow()

    async def _placed_and_read(
        self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]], lane: dict[str, list[Pending]]
    ) -> tuple[bool, tuple[list[str], list[CustomerRecord]]]:
        """:meth:`_placed` and the lane's (keyed hashes, records) (:meth:`_records`) in one round trip."""
        kafka = self.settings.kafka
        keys = [self.hasher.customer_key(cid) for cid in lane]
        partitions = [tp.partition for tp in batch]
        records, stored = await self._records(keys, (kafka.group_id, kafka.events_topic, partitions))
        return await self._placed(batch, stored), (keys, records)

    async def _placed(
        self,
        batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
        stored: dict[int, int | None] | None = None,
    ) -> bool:
        """Check the stored offsets of the batch's partitions (one HMGET, unless ``stored`` were read
        already); False if any had to be moved.

        A partition whose stored offset is missing or behind what this consumer stored last lost
        state in Redis: it is replayed from the stored offset (or the start of the log), and the
        per-customer offsets make the replay idempotent for the customers Redis still has. A
        partition placed before its stored offset could be read (Redis was down on assignment)
        is placed now. Either way the whole batch is dropped (the other partitions rewound to its
        first records): it is polled again from the new positions.
        """
        kafka = self.settings.kafka
        tps = list(batch)
        if stored is None:
            partitions = [tp.partition for tp in tps]
            stored = await self.store.stored_offsets_of(kafka.group_id, kafka.events_topic, partitions)
        moves: dict[TopicPartition, int | None] = {}
        lost: list[int] = []
        for tp in tps:
            have = stored[tp.partition]
            if tp not in self._stored:
                if have != batch[tp][0].offset:
                    moves[tp] = have
            else:
                known = self._stored[tp]
                if known is not None and (have is None or have < known):
                    moves[tp] = have
                    lost.append(tp.partition)
        if not moves:
            return True
        if lost:
            # Redis came back empty or behind (a restart without persistence, a flush, a failover, a lost AOF
            # tail): folding on would write snapshots of the newer events only. Replay from what it still has.
            log.warning("Redis lost consumer state of partitions %s; replaying them from the stored offsets", lost)
            metrics.STATE_RESETS.inc(len(lost))
        self.cache.clear()
        beginning = []
        for tp in tps:
            if tp not in self.assigned:
                continue
            if tp not in moves:
                self.consumer.seek(tp, batch[tp][0].offset)
                continue
            offset = self._stored[tp] = moves[tp]
            if offset is None:
                beginning.append(tp)
            else:
                self.consumer.seek(tp, offset)
        if beginning:
            await self.consumer.seek_to_beginning(*beginning)
        return False

    async def _apply_lane(
        self,
        pending: dict[str, list[Pending]],
        first: tuple[list[str], list[CustomerRecord]] | None = None,
        offsets: dict[int, int] | None = None,
    ) -> bool:
        """Fold one lane's customers and write them; refold the ones another writer got to first.

        ``first``: the customers' keyed hashes and records, already read. ``offsets``: the batch's
        next offsets, to store with the write if it is one script call; returns whether they were.
        """
        customer_key = self.hasher.customer_key
        for _ in range(_MAX_CAS_RETRIES):
            if first is not None:
                keys, records = first
                first = None
            else:
                keys = [customer_key(cid) for cid in pending]
                records, _ = await self._records(keys)
            plan = self.planner.plan(pending, keys, records, int(self.clock()))
            if self.shadow is not None and plan.rows is not None:
                self._shadow_rows.append(plan.rows)
            await self._publish(plan)
            inline = offsets is not None and self.store.fits_one_call(plan.ops)
            ok = await self.store.apply(plan.ops, (self.offsets_key, offsets) if inline and offsets else None)
            lost = set()
            for op, good in zip(plan.ops, ok, strict=True):
                if good:
                    self.cache.put(op)
                else:  # not put back (taken out when read): the retry reads what the other writer stored
                    lost.add(op.customer_key)
            if not lost:
                return inline
            offsets = None  # not stored with a write that lost a compare-and-set: stored after the retry
            # Another writer (a zombie from before a rebalance) got in between: read again, refold.
            metrics.DUPLICATES.labels("cas_conflict").inc(len(lost))
            pending = {cid: evs for cid, evs in pending.items() if customer_key(cid) in lost}
        raise RuntimeError("compare-and-set kept failing; another consumer owns these customers")

    async def report_shadow(self) -> Comparison | None:
        """Compare the shadow model with the live one on recently scored customers; store the report."""
        if self.shadow is None or self.model is None or not self._shadow_rows:
            return None
        rows = np.concatenate(self._shadow_rows)[-_SHADOW_ROWS:]
        self._shadow_rows = [rows]
        self._shadow_reported = time.monotonic()
        report = compare(self.model, self.shadow, rows, alert_threshold=self.settings.stream.churn_alert_threshold)
        await self.store.put_shadow_report(msgspec.json.encode(report))
        log.info(
            "shadow %s vs live %s on %d customers: mean |diff| %.4f, alert agreement %.3f",
            report.candidate_version, report.live_version, report.rows, report.mean_abs_diff, report.alert_agreement,
        )  # fmt: skip
        return report

    async def _records(
        self, keys: list[str], offsets_of: tuple[str, str, list[int]] | None = None
    ) -> tuple[list[CustomerRecord], dict[int, int | None]]:
        """Records of these customers: what this consumer last wrote if cached, else read from Redis;
        and, if ``offsets_of`` (group, topic, partitions), those partitions' stored offsets, read with them."""
        records: list[CustomerRecord | None] = [self.cache.take(h) for h in keys]
        missing = [i for i, rec in enumerate(records) if rec is None]
        _CACHE_HITS.inc(len(keys) - len(missing))
        _CACHE_MISSES.inc(len(missing))
        stored: dict[int, int | None] = {}
        if missing or offsets_of:
            wanted = [keys[i] for i in missing]
            if offsets_of is None:
                read = await self.store.read_customers(wanted)
            else:
                read, stored = await self.store.read_customers_and_offsets(wanted, *offsets_of)
            for i, rec in zip(missing, read, strict=True):
                records[i] = rec
        return records, stored  # type: ignore[return-value]  # every None was filled

    async def publish(self, plan: Plan) -> None:
        """Publish a plan's dead letters and alerts, each once (the sweep's alerts come this way too)."""
        await self._publish(plan)

    async def _publish(self, plan: Plan) -> None:
        """Dead letters and alerts, acknowledged by the broker before any state is written; each once.

        A batch is retried whole after a Redis fault, and a crashed consumer's batch is redelivered:
        what was already published (remembered in Redis, and in memory while Redis is down) is not
        sent again. Only a crash between the broker's acknowledgement and the marker's write (one
        round trip) can still repeat one; the ``dlq.origin.*`` headers and the alert id are the keys
        to drop such a repeat by.
        """
        keys = self.store.keys
        kafka = self.settings.kafka
        todo: list[tuple[str, Dead | ChurnAlert]] = [
            (keys.dead_letter_sent(d.record.topic, d.record.partition, d.record.offset), d) for d in plan.dead
        ]
        todo += [(keys.alert_sent(a.alert_id), a) for a in plan.alerts]
        todo = [(key, item) for key, item in todo if key not in self._published]
        if not todo:
            return
        seen = await self.store.already_published([key for key, _ in todo])
        sending: list[tuple[str, Dead | ChurnAlert]] = []
        futures = []
        for (key, item), was_sent in zip(todo, seen, strict=True):
            if was_sent:
                self._remember(key)
                continue
            if isinstance(item, Dead):
                futures.append(await self._send_dead(item))
            else:
                futures.append(
                    await self.producer.send(
                        kafka.alerts_topic, value=_alert_encoder.encode(item), key=item.customer_id.encode()
                    )
                )
            sending.append((key, item))
        results = await asyncio.gather(*futures, return_exceptions=True)
        acked: list[str] = []
        for (key, item), result in zip(sending, results, strict=True):
            if not isinstance(result, BaseException):
                acked.append(key)
                self._remember(key)
                if isinstance(item, ChurnAlert):
                    metrics.ALERTS.inc()
        await self.store.mark_published(acked, _PUBLISHED_TTL_S)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise failed[0]  # the batch is retried; what was acknowledged is not sent again

    def _remember(self, key: str) -> None:
        self._published[key] = None
        if len(self._published) > _PUBLISHED_IN_MEMORY:
            self._published.popitem(last=False)

    async def _send_dead(self, d: Dead) -> asyncio.Future[Any]:
        rec = d.record
        future: asyncio.Future[Any] = await self.producer.send(
            self.settings.kafka.dead_letter_topic,
            value=rec.value,
            key=rec.key,
            timestamp_ms=rec.timestamp if rec.timestamp and rec.timestamp > 0 else None,
            headers=d.headers(),
        )
        metrics.DEAD_LETTERED.labels(d.reason).inc()
        log.warning(
            "dead-lettered %s:%d@%d reason=%s error=%s",
            rec.topic, rec.partition, rec.offset, d.reason, type(d.error).__name__,
        )  # fmt: skip
        return future


async def run_consumer(settings: Settings) -> None:
    """Run one consumer process until SIGINT/SIGTERM; each resource opens and closes in order."""
    setup_logging(settings.api.log_level)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with consumer_stack(settings) as worker:
        loop.add_signal_handler(signal.SIGHUP, worker.on_sighup)
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
async def consumer_stack(settings: Settings, *, clock: Callable[[], float] = time.time) -> AsyncIterator[StateConsumer]:
    """One consumer's resources, opened in order and closed in reverse (``clock``: tests move time)."""
    require_safe(settings, binds_api=False)  # a placeholder identity key: SystemExit before connecting
    hasher = IdentityHasher.from_settings(settings.identity)
    client = connect_redis(settings.redis, timeout_s=5.0)
    store = StateStore(client, settings.redis.prefix, hasher)
    model: ChurnModel | None
    try:
        model = ChurnModel.load(settings.model.path, business=settings.model.business)
    except ModelError as exc:
        log.error("churn model unavailable, scores keep their last values: %s", exc)
        model = None
    metrics.MODEL_LOADED.set(1 if model else 0)
    if model is not None:
        metrics.MODEL_INFO.info({"version": model.version, "path": settings.model.path})
    shadow: ChurnModel | None = None
    if settings.model.shadow_path:
        try:
            shadow = ChurnModel.load(settings.model.shadow_path, business=settings.model.business)
            log.info("shadow model %s scored beside live %s", shadow.version, model.version if model else "none")
        except ModelError as exc:
            log.error("shadow model not loaded: %s", exc)
    # The consumer needs only the policy's cost-to-serve prices (CLV subtracts them); the file is the
    # API's, so a policy the API could not load stops the consumer too, rather than CLVs without cost.
    spec, policy_sha = read_policy_file(settings.policy.path)
    kafka = settings.kafka
    producer = AIOKafkaProducer(**producer_config(kafka))
    consumer = AIOKafkaConsumer(
        **consumer_config(kafka),
        # how long an event can sit in the broker before this consumer sees it (BENCHMARKS.md, freshness)
        fetch_min_bytes=kafka.fetch_min_bytes,
        fetch_max_wait_ms=kafka.fetch_max_wait_ms,
        session_timeout_ms=kafka.session_timeout_ms,
        heartbeat_interval_ms=max(100, kafka.session_timeout_ms // 4),
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    worker = StateConsumer(
        settings, store, model, consumer, producer, shadow, prices=spec.service_cost.prices(), clock=clock
    )
    worker.policy_sha = policy_sha
    worker.probe = RedisProbe(client)
    consumer.subscribe([kafka.events_topic], listener=_Rebalance(worker))
    health = HealthServer(settings.stream.health_host, settings.stream.health_port, worker.ready)
    follow_s = settings.model.follow_s
    followers = (
        Follower(store, "model", follow_s, lambda: _sha(worker.next_model or worker.model),
                 lambda a: worker.load_model(a.path, a.sha256)),
        Follower(store, "policy", follow_s, lambda: worker.policy_sha, lambda a: worker.load_prices(a.path, a.sha256)),
    )  # fmt: skip
    started: list[Follower] = []
    try:
        await producer.start()
        await consumer.start()
        await worker.probe.start()
        await health.start()
        for follower in followers:
            await follower.start()
            started.append(follower)
        worker._swap_reloads()  # an announced model is in force before the first batch
        yield worker
    finally:
        for follower in started:
            await follower.stop()
        await health.stop()
        await worker.probe.stop()
        if worker._committing is not None:
            await worker._committing
        with contextlib.suppress(Exception):
            await worker.commit()
        await consumer.stop()
        await producer.stop()
        await client.aclose()


def _sha(model: ChurnModel | None) -> str:
    return model.sha256 if model is not None else ""
