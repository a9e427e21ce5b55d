"""Audit trail of decisions and admin actions: off the request's critical path, without clear PII.

The request handler only appends to an in-process queue (O(1), never blocks); a background
task drains it in batches into Redis streams: one global stream with a retention cap, and
one short stream per customer (keyed by the customer's keyed hash) for the transparency view.
A customer's stream exists only while the customer is live: the write script checks the
customer's hash first, so an unknown id leaves no key behind and a record queued in any API
worker before an erasure cannot recreate the stream after it (the consumer deletes the stream
with the tombstone). Customer streams are capped in length and expire after
``redis.audit_retention_days`` without a record.
The writer lets a few milliseconds of records gather before it writes (``linger_s``), and a
batch is one script call on standalone Redis: the writer shares the worker's core with the
requests, and one command per decision would cost it about as much as the decision's own read.
Admin actions (override, erasure, reloads) are :class:`AdminRecord` entries in the same
streams, naming the API key that acted. Records are a tagged union on ``kind``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable

import msgspec

from router.ops import metrics
from router.state.store import StateStore

__all__ = ["AdminRecord", "AnyRecord", "AuditReader", "AuditRecord", "AuditWriter"]

log = logging.getLogger("router.state.audit")


class AuditRecord(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="decision"):
    """One decision as recorded. ``customer_key`` is the keyed hash, never the clear id."""

    decision_id: str
    at: float
    customer_key: str | None
    inputs: dict[str, float | str | bool | None]
    """What the policy looked at (scores, counts, the contact's channel, category, priority)."""
    tier: str
    role: str
    queue: str
    actions: list[str]
    due_at: str
    model_version: str
    policy_version: str
    override: str | None = None
    degraded_cause: str | None = None
    reasons: list[str] = []
    """The decision's reasons in plain words, as the caller got them."""
    arm: str | None = None
    """Next-best-action experiment arm (``action`` / ``control``; None: no control group ran)."""
    withheld: list[str] = []
    """Control arm: the next-best-actions the policy chose and the customer did not get (the standard action instead)."""


class AdminRecord(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="admin"):
    """An administrative action: who (API key name), what, on whom (keyed hash), with what detail."""

    action: str
    """``override_set``, ``override_removed``, ``erasure_requested``, ``outcome_recorded``, ``policy_reload``, ..."""
    at: float
    actor: str
    customer_key: str | None = None
    detail: str | None = None
    """Free text without personal data (a tier, a version, a reason code)."""
    decision_id: str | None = None


AnyRecord = AuditRecord | AdminRecord

_enc = msgspec.json.Encoder()
_dec: msgspec.json.Decoder[AnyRecord] = msgspec.json.Decoder(AnyRecord)
_BATCH_MAX = 500
_FIND_MAX = 1_000
"""More than a capped customer stream holds (approximate trimming keeps a little over the cap)."""


class AuditWriter:
    """Queues records and writes them in batches; drops (and counts) when Redis cannot keep up."""

    def __init__(
        self,
        store: StateStore,
        *,
        maxlen: int = 1_000_000,
        per_customer: int = 100,
        retention_s: int = 180 * 86_400,
        linger_s: float = 0.01,
    ) -> None:
        self.store = store
        self.maxlen = maxlen
        self.per_customer = per_customer
        self.retention_s = retention_s
        """TTL of a customer's stream, renewed by every record written to it."""
        self.linger_s = linger_s
        """How long the first record of a batch waits for others (a record is in Redis this much later)."""
        self.queue: asyncio.Queue[AnyRecord] = asyncio.Queue(maxsize=50_000)
        self._task: asyncio.Task[None] | None = None
        self._pending = 0
        """Records queued and not yet written or dropped (what :meth:`flush` waits for)."""

    def record(self, rec: AnyRecord) -> None:
        """Enqueue without waiting; never raises into the request."""
        try:
            self.queue.put_nowait(rec)
        except asyncio.QueueFull:
            metrics.AUDIT_DROPPED.inc()
            return
        self._pending += 1

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def stop(self) -> None:
        """Flush what is queued (bounded in time), then stop the task."""
        if self._task is None:
            return
        await self.flush(2.0)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            try:
                if self.linger_s > 0 and self.queue.qsize() < _BATCH_MAX - 1:
                    await asyncio.sleep(self.linger_s)
                while len(batch) < _BATCH_MAX and not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                await self._write(batch)
            except Exception as exc:  # Redis down: the decision was already answered; count it
                metrics.AUDIT_DROPPED.inc(len(batch))
                log.warning("audit batch of %d lost: %s", len(batch), type(exc).__name__)
                await asyncio.sleep(0.5)
            finally:
                self._pending -= len(batch)

    async def _write(self, batch: list[AnyRecord]) -> None:
        entries = [(_enc.encode(rec).decode(), rec.customer_key) for rec in batch]  # str: cmsgpack has no bin
        await self.store.append_audit(
            entries, maxlen=self.maxlen, per_customer=self.per_customer, ttl_s=self.retention_s
        )

    async def for_customer(self, customer_key: str, count: int = 50) -> list[AnyRecord]:
        """Most recent records of one customer, newest first."""
        return [_dec.decode(raw) for raw in await self.store.customer_audit(customer_key, count)]

    async def find_decision(self, customer_key: str, decision_id: str) -> AuditRecord | None:
        """The decision ``decision_id`` if it is in this customer's stream (so it was about them).

        The stream is short (capped near ``per_customer``, gone with the customer), so reading it
        whole is cheap; records that do not even contain the id are not decoded.
        """
        needle = decision_id.encode()
        for raw in await self.store.customer_audit(customer_key, _FIND_MAX):
            if needle in raw:
                rec = _dec.decode(raw)
                if isinstance(rec, AuditRecord) and rec.decision_id == decision_id:
                    return rec
        return None

    async def flush(self, timeout_s: float = 2.0) -> None:
        """Wait until everything queued so far was written (or dropped); for tests and shutdown.

        Polls instead of awaiting the queue: tests call it from another event loop than the writer's.
        """
        deadline = time.monotonic() + timeout_s
        while self._pending and time.monotonic() < deadline:  # noqa: ASYNC110 - an Event is bound to one loop
            await asyncio.sleep(0.001)


# -- reading the trail back (the console's decision search, the policy simulation) -------------

_SCAN_CHUNK = 1_000
_ID_TIME = re.compile(r"^d-([0-9a-f]{1,12})-")


class AuditReader:
    """Searches the audit streams: by decision id, by customer (keyed hash), by time range.

    The global stream's entry ids are the milliseconds the writer added them (a few ms after
    the decision), so a time range is an ``XRANGE`` and a decision id, which carries its own
    millisecond, is found by reading the minute after it. Records are read in chunks with a
    yield to the event loop between them: a week of decisions must not stall the worker.
    """

    def __init__(self, store: StateStore) -> None:
        self.store = store

    async def for_customer(self, customer_key: str, count: int = 50) -> list[AnyRecord]:
        """Most recent records of one customer (decisions and admin actions), newest first."""
        return [_dec.decode(raw) for raw in await self.store.customer_audit(customer_key, count)]

    async def decision(self, decision_id: str) -> AuditRecord | None:
        """The audited decision with this id, if the global stream still holds it."""
        m = _ID_TIME.match(decision_id)
        if m is None:
            return None
        ms = int(m.group(1), 16)
        # The writer lingers ~10 ms and may lag behind under load: a minute after the decision is ample.
        needle = decision_id.encode()
        async for raw in self._raw_between(ms / 1000 - 1.0, ms / 1000 + 60.0, _SCAN_CHUNK):
            if needle in raw:
                rec = _dec.decode(raw)
                if isinstance(rec, AuditRecord) and rec.decision_id == decision_id:
                    return rec
        return None

    async def between(self, start: float, end: float, *, chunk: int = _SCAN_CHUNK) -> AsyncIterator[AnyRecord]:
        """Every record written between epoch seconds ``start`` and ``end``, oldest first."""
        async for raw in self._raw_between(start, end, chunk):
            yield _dec.decode(raw)

    async def _raw_between(self, start: float, end: float, chunk: int) -> AsyncIterator[bytes]:
        low, high = _stream_id(start, 0), _stream_id(end, _LAST)
        while True:
            rows = await self.store.audit_range(low, high, chunk)
            for _, raw in rows:
                yield raw
            if len(rows) < chunk:
                return
            low = "(" + rows[-1][0]
            await asyncio.sleep(0)

    async def newest(
        self, start: float, end: float, *, keep: Callable[[AuditRecord], bool], limit: int, scan_max: int
    ) -> tuple[list[AuditRecord], int, bool]:
        """Up to ``limit`` decisions between ``start`` and ``end`` that ``keep`` accepts, newest first.

        Reads backwards at most ``scan_max`` records: returns (records, records read, whether the
        whole range was read).
        """
        found: list[AuditRecord] = []
        read = 0
        low, high = _stream_id(start, 0), _stream_id(end, _LAST)
        while read < scan_max:
            want = min(_SCAN_CHUNK, scan_max - read)
            rows = await self.store.audit_range_newest(high, low, want)
            read += len(rows)
            for _, raw in rows:
                rec = _dec.decode(raw)
                if isinstance(rec, AuditRecord) and keep(rec):
                    found.append(rec)
                    if len(found) >= limit:
                        return found, read, False
            if len(rows) < want:
                return found, read, True
            high = "(" + rows[-1][0]
            await asyncio.sleep(0)
        return found, read, False


_LAST = 18446744073709551615


def _stream_id(at: float, seq: int) -> str:
    return f"{max(0, int(at * 1000))}-{seq}"
