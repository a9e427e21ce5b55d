"""The sweep: customers whose stored score is due are rescored without waiting for an event.

A churn score moves with the clock as well as with events: days since the last interaction
and tenure grow, and the 30- and 90-day windows empty out. A customer who goes silent, the most
common way customers leave, would otherwise never cross the alert threshold, and the CLV
histogram and portfolio counters would keep their old values. Every write of a customer records
when its score is due (:func:`router.state.records.due_time`: when the model's answer stops
being exact, ``ChurnModel.stable_until``, and at the latest ``stream.sweep_max_age_s`` after
scoring) in the *due index* of its partition: a sorted set written by the same script as the
snapshot, so the sweep reads only customers that are due, never the whole population.

Every ``stream.sweep_interval_s`` each consumer process sweeps the partitions it owns (a task
beside its poll loop, off the batch path): step by step it reads up to ``stream.sweep_batch`` due
customers of a partition (earliest first) and their records, scores them with the planner's own
code (:meth:`~router.ingest.planning.BatchPlanner.rescore`: one batched model call, the CLV and its
histogram bin, the portfolio counters, a churn alert on an upward crossing), publishes the alerts,
and writes only the new scores, histogram and counter moves and due time, in one script call per
100 customers. A written customer's new due time lies after the sweep's "now", so the partition's
next step finds the next ones; three partitions are swept at once, so one's Redis round trips
overlap another's scoring. Steps are small (``stream.sweep_batch``, 250): the event batches of the
same process wait for at most one step's scoring.

Safety, with several consumers and on Redis Cluster: a customer's due index is its partition's,
so only the partition's owner sweeps it; each write is a compare-and-set on the offsets the
record was read with, so a newer event's write always wins (the sweep's write is dropped and the
event's write has set the due time). A sweep write also counts itself in the stored offsets
(:data:`~router.state.records.SWEEP_MARK`): an event writer that read the record before it, a
zombie or this process's own record cache, then loses its compare-and-set and reads again rather
than moving histogram entries twice. The alert id comes from those offsets, so a sweep redone
after a crash raises the same alert id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiokafka import TopicPartition

from router.ops import metrics
from router.state.records import CustomerRecord

if TYPE_CHECKING:
    from router.ingest.consumer import StateConsumer

__all__ = ["SweepReport", "Sweeper"]

log = logging.getLogger("router.ingest.sweep")

_CONCURRENT_PARTITIONS = 3
"""Partitions swept at once: while one step waits for Redis, another is scored."""
_RESCORED = metrics.SWEEP_CUSTOMERS.labels("rescored")
_CONFLICTS = metrics.SWEEP_CUSTOMERS.labels("conflict")
_GONE = metrics.SWEEP_CUSTOMERS.labels("gone")


@dataclass(slots=True)
class SweepReport:
    """What one sweep did."""

    rescored: int = 0
    conflicts: int = 0
    """Customers a newer write got to first (their new state stands, with its own due time)."""
    gone: int = 0
    """Index entries removed: customers erased or deleted, or whose events now come from another partition."""
    alerts: int = 0
    seconds: float = 0.0


class Sweeper:
    """Rescoring of one consumer's due customers; built by :class:`~router.ingest.consumer.StateConsumer`."""

    def __init__(self, owner: StateConsumer) -> None:
        self.owner = owner
        self._redis = asyncio.Lock()
        """One sweep call on Redis at a time, whichever partition it is for: a script runs alone there,
        so a decision's read waits for at most one of them (partitions overlap scoring, not Redis time)."""
        self.total = SweepReport()
        """Everything swept since start."""

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep every ``stream.sweep_interval_s`` until ``stop``; a failed sweep is retried at the next."""
        interval = self.owner.settings.stream.sweep_interval_s
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            if stop.is_set():
                return
            try:
                await self.sweep(stop)
            except Exception as exc:  # Redis or broker fault: the customers stay due, the next sweep takes them
                log.warning("sweep failed, retried in %.0f s: %s", interval, type(exc).__name__, exc_info=exc)

    async def sweep(self, stop: asyncio.Event | None = None) -> SweepReport:
        """Rescore every due customer of the partitions this consumer owns now."""
        t0 = time.perf_counter()
        now = int(self.owner.clock())
        report = SweepReport()
        owner = self.owner
        gate = asyncio.Semaphore(_CONCURRENT_PARTITIONS)

        async def one(tp: TopicPartition) -> None:
            async with gate:
                await self._partition(tp, now, report, stop)

        await asyncio.gather(*(one(tp) for tp in sorted(owner.assigned, key=lambda tp: tp.partition)))
        report.seconds = time.perf_counter() - t0
        metrics.SWEEP_SECONDS.observe(report.seconds)
        due = 0
        for tp in list(owner.assigned):
            due += await owner.store.due_count(tp.partition, now)
        metrics.SWEEP_DUE.set(due)
        total = self.total
        total.rescored += report.rescored
        total.conflicts += report.conflicts
        total.gone += report.gone
        total.alerts += report.alerts
        total.seconds += report.seconds
        if report.rescored or report.gone:
            log.info(
                "sweep: %d customers rescored, %d lost to newer writes, %d gone, %d alerts in %.2f s",
                report.rescored, report.conflicts, report.gone, report.alerts, report.seconds,
            )  # fmt: skip
        return report

    async def _partition(self, tp: TopicPartition, now: int, report: SweepReport, stop: asyncio.Event | None) -> None:
        """Read, score and write the partition's due customers step by step until none is left."""
        owner = self.owner
        seen: set[str] = set()
        while tp in owner.assigned and not (stop is not None and stop.is_set()):
            # Another member may own the partition by the time the step is written: its writes then win
            # the compare-and-set, or ours land first and its own write reads them. Either way consistent.
            keys, records = await self.fetch(tp.partition, now)
            fresh = [i for i, h in enumerate(keys) if h not in seen]
            if not fresh:
                return  # nothing due, or only customers whose write this pass already tried
            if len(fresh) < len(keys):
                keys, records = [keys[i] for i in fresh], [records[i] for i in fresh]
            seen.update(keys)
            await self.step(tp.partition, keys, records, now, report)

    async def fetch(self, partition: int, now: int) -> tuple[list[str], list[CustomerRecord]]:
        """Up to ``stream.sweep_batch`` due customers of ``partition`` (earliest first) and their records."""
        store = self.owner.store
        async with self._redis:
            keys = await store.due_customers(partition, now, self.owner.settings.stream.sweep_batch)
            if not keys:
                return [], []
            return keys, await store.read_due(keys)

    async def step(
        self, partition: int, keys: list[str], records: list[CustomerRecord], now: int, report: SweepReport
    ) -> list[bool]:
        """Score claimed customers, publish their alerts, write; per customer whether the write held."""
        owner = self.owner
        plan = owner.planner.rescore(keys, records, partition, now)
        await owner.publish(plan)  # alerts are acknowledged before the scores that raised them are written
        async with self._redis:
            ok = await owner.store.rescore(plan.ops, partition)
        cache = owner.cache
        rescored = conflicts = gone = 0
        for op, good in zip(plan.ops, ok, strict=True):
            cache.discard(op.customer_key)  # its cached offsets are no longer the stored ones
            if not good:
                conflicts += 1
            elif op.due_at is None:
                gone += 1
            else:
                rescored += 1
        report.rescored += rescored
        report.conflicts += conflicts
        report.gone += gone
        report.alerts += len(plan.alerts)
        _RESCORED.inc(rescored)
        _CONFLICTS.inc(conflicts)
        _GONE.inc(gone)
        return ok
