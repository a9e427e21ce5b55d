"""Audit trail of decisions: recorded off the request's critical path, without clear PII.

The request handler only appends to an in-process queue (O(1), never blocks); a background
task drains it in batches into Redis streams: one global stream with a retention cap, and
one short stream per customer (keyed by the customer's keyed hash) for the transparency view.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import msgspec

from router import metrics
from router.store import RedisClient

__all__ = ["AuditRecord", "AuditWriter"]

log = logging.getLogger("router.audit")


class AuditRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One decision as recorded. ``customer_key`` is the keyed hash, never the clear id."""

    decision_id: str
    at: float
    customer_key: str | None
    inputs: dict[str, float | str | None]
    tier: str
    role: str
    queue: str
    actions: list[str]
    due_at: str
    model_version: str
    policy_version: str
    override: str | None = None
    degraded_cause: str | None = None
    kind: str = "decision"


_enc = msgspec.json.Encoder()


class AuditWriter:
    """Queues records and writes them in batches; drops (and counts) when Redis cannot keep up."""

    def __init__(self, client: RedisClient, prefix: str, *, maxlen: int = 1_000_000, per_customer: int = 100) -> None:
        self.client = client
        self.stream = f"{prefix}:{{audit}}:decisions"
        self.prefix = prefix
        self.maxlen = maxlen
        self.per_customer = per_customer
        self.queue: asyncio.Queue[AuditRecord] = asyncio.Queue(maxsize=50_000)
        self._task: asyncio.Task[None] | None = None

    def customer_stream(self, customer_key: str) -> str:
        return f"{self.prefix}:{{{customer_key[:2]}}}:a:{customer_key}"

    def record(self, rec: AuditRecord) -> None:
        """Enqueue without waiting; never raises into the request."""
        try:
            self.queue.put_nowait(rec)
        except asyncio.QueueFull:
            metrics.AUDIT_DROPPED.inc()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def stop(self) -> None:
        """Flush what is queued (bounded in time), then stop the task."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.queue.join(), 2.0)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        while True:
            first = await self.queue.get()
            batch = [first]
            while len(batch) < 500 and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                await self._write(batch)
            except Exception as exc:  # Redis down: the decision was already answered; count it
                metrics.AUDIT_DROPPED.inc(len(batch))
                log.warning("audit batch of %d lost: %s", len(batch), type(exc).__name__)
                await asyncio.sleep(0.5)
            finally:
                for _ in batch:
                    self.queue.task_done()

    async def _write(self, batch: list[AuditRecord]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for rec in batch:
            fields = {"r": _enc.encode(rec)}
            pipe.xadd(self.stream, fields, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
            if rec.customer_key:
                pipe.xadd(self.customer_stream(rec.customer_key), fields, maxlen=self.per_customer, approximate=True)  # type: ignore[arg-type]
        await pipe.execute()

    async def for_customer(self, customer_key: str, count: int = 50) -> list[AuditRecord]:
        """Most recent records of one customer, newest first."""
        rows: Any = await self.client.xrevrange(self.customer_stream(customer_key), count=count)
        dec = msgspec.json.Decoder(AuditRecord)
        return [dec.decode(fields[b"r"]) for _, fields in rows]
