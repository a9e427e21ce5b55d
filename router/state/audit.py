"""Audit trail of decisions and admin actions: off the request's critical path, without clear PII.

The request handler only appends to an in-process queue (O(1), never blocks); a background
task drains it in batches into Redis streams: one global stream with a retention cap, and
one short stream per customer (keyed by the customer's keyed hash) for the transparency view.
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
import time
from typing import Any

import msgspec
from redis.asyncio.cluster import RedisCluster

from router.ops import metrics
from router.state.keys import Keys
from router.state.store import RedisClient

__all__ = ["AdminRecord", "AnyRecord", "AuditRecord", "AuditWriter"]

log = logging.getLogger("router.state.audit")


class AuditRecord(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="decision"):
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

# One call per batch. KEYS[1]: the global stream, KEYS[2..]: customer streams. ARGV[1], ARGV[2]:
# their length caps; ARGV[3]: msgpack array of (record JSON, KEYS index of its customer stream or 0)
# pairs, one argument for the whole batch (redis-py packs every argument in Python).
_WRITE_LUA = """
local cap, per = ARGV[1], ARGV[2]
local batch = cmsgpack.unpack(ARGV[3])
for i = 1, #batch, 2 do
  local rec, k = batch[i], batch[i + 1]
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', cap, '*', 'r', rec)
  if k > 0 then redis.call('XADD', KEYS[k], 'MAXLEN', '~', per, '*', 'r', rec) end
end
return #batch / 2
"""
_pack = msgspec.msgpack.Encoder()


class AuditWriter:
    """Queues records and writes them in batches; drops (and counts) when Redis cannot keep up."""

    def __init__(
        self,
        client: RedisClient,
        keys: Keys,
        *,
        maxlen: int = 1_000_000,
        per_customer: int = 100,
        linger_s: float = 0.01,
    ) -> None:
        self.client = client
        self.stream = keys.audit()
        self.customer_stream = keys.customer_audit
        self.maxlen = maxlen
        self.per_customer = per_customer
        self.linger_s = linger_s
        """How long the first record of a batch waits for others (a record is in Redis this much later)."""
        self.queue: asyncio.Queue[AnyRecord] = asyncio.Queue(maxsize=50_000)
        self._task: asyncio.Task[None] | None = None
        self._pending = 0
        """Records queued and not yet written or dropped (what :meth:`flush` waits for)."""
        # The streams of one batch share no hash tag: on a cluster, a pipeline (Redis routes each XADD).
        self._script = None if isinstance(client, RedisCluster) else client.register_script(_WRITE_LUA)

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
        if self._script is not None:
            keys: list[str] = [self.stream]
            index: dict[str, int] = {}
            pairs: list[str | int] = []
            for rec in batch:
                k = 0
                if rec.customer_key:
                    stream = self.customer_stream(rec.customer_key)
                    k = index.get(stream, 0)
                    if not k:
                        keys.append(stream)
                        k = index[stream] = len(keys)
                pairs += (_enc.encode(rec).decode(), k)  # msgpack str: Redis's cmsgpack reads no bin type
            await self._script(keys, (self.maxlen, self.per_customer, _pack.encode(pairs)))
            return
        pipe = self.client.pipeline(transaction=False)
        for rec in batch:
            fields = {"r": _enc.encode(rec)}
            pipe.xadd(self.stream, fields, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
            if rec.customer_key:
                pipe.xadd(self.customer_stream(rec.customer_key), fields, maxlen=self.per_customer, approximate=True)  # type: ignore[arg-type]
        await pipe.execute()

    async def for_customer(self, customer_key: str, count: int = 50) -> list[AnyRecord]:
        """Most recent records of one customer, newest first."""
        rows: Any = await self.client.xrevrange(self.customer_stream(customer_key), count=count)
        return [_dec.decode(fields[b"r"]) for _, fields in rows]

    async def flush(self, timeout_s: float = 2.0) -> None:
        """Wait until everything queued so far was written (or dropped); for tests and shutdown.

        Polls instead of awaiting the queue: tests call it from another event loop than the writer's.
        """
        deadline = time.monotonic() + timeout_s
        while self._pending and time.monotonic() < deadline:  # noqa: ASYNC110 - an Event is bound to one loop
            await asyncio.sleep(0.001)
