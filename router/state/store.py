"""Customer state in Redis: atomic apply, lookups, and every other read or write of the state.

Key names come from :class:`~router.state.keys.Keys` only. Every Lua script is registered with
redis-py (``register_script``), which reloads it when Redis forgot it (NOSCRIPT); in pipelines
the scripts go as plain EVALSHA and a NOSCRIPT is handled here (:meth:`StateStore._execute`).

A customer's snapshot, its offsets and the histogram and counter shards its write lands in
share one hash tag, so a single Lua script updates them atomically even on Redis Cluster:
that is what makes the consumer's effect exactly-once (see :mod:`router.ingest.consumer`). Only
the sum of a field over the 256 shards means anything (a script call's increments land in one
shard pair: its hash tag's on a cluster, always 00 on a single Redis), so readers always sum.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from router.core.identity import IdentityHasher
from router.core.kpi import KPI_TOTALS, PortfolioCounters
from router.settings import RedisSettings
from router.state.keys import HIST_SHARDS, Keys, customer_hash_of
from router.state.records import (
    Announcement,
    CustomerRecord,
    WriteOp,
    decode_override,
    decode_scores,
    decode_snapshot,
    encode_marks,
    encode_override,
    encode_scores,
    encode_snapshot,
    record_of,
)
from schemas.api import Override

__all__ = ["RedisClient", "StateStore", "connect", "connect_redis"]

_SHARDS_PER_TRIP = 16
_READS_PER_CALL = 500
_WRITES_PER_CALL = 250
"""Customers per script call. A script runs alone on Redis: a call covering a whole batch held
every API read back for ~10 ms; calls of this size take about a millisecond each and share one
pipeline (one round trip), so the API's reads slip in between them."""
_SWEEP_WRITES_PER_CALL = 100
"""Customers per write call of the sweep: it has no hurry, so it holds Redis for shorter stretches
than the consumer's batches (and one call at a time: a decision's read waits for at most one)."""
_SWEEP_READS_PER_CALL = 100
"""Customers per read call of the sweep (a call of 250 doubled the classify p99 it added, BENCHMARKS.md)."""

RedisClient = aioredis.Redis | RedisCluster


def connect(url: str, *, cluster: bool, timeout_s: float | None = None) -> RedisClient:
    """A Redis (or Redis Cluster) client; nothing is sent until first use."""
    if cluster:
        return RedisCluster.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    return aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)


def connect_redis(settings: RedisSettings, *, timeout_s: float | None) -> RedisClient:
    """The client every process builds from its settings (``timeout_s`` per socket operation)."""
    return connect(settings.url, cluster=settings.cluster, timeout_s=timeout_s)


# Shared by the scripts that move a customer's CLV bin and portfolio counters: deltas are summed
# per field first and written once per call into the call's shard pair (see _APPLY_LUA).
_DELTAS_LUA = r"""
local function add_deltas(hist, kpi, old, new, incs)
  if old ~= new then
    if old then hist[old] = (hist[old] or 0) - 1 end
    if new then hist[new] = (hist[new] or 0) + 1 end
  end
  for j = 1, #incs - 1, 2 do
    local f = incs[j]
    kpi[f] = (kpi[f] or 0) + incs[j + 1]
  end
end
local function flush_deltas(hist, kpi, hist_key, kpi_key)
  for b, d in pairs(hist) do
    if d ~= 0 then redis.call('HINCRBY', hist_key, b, d) end
  end
  for f, d in pairs(kpi) do
    if d ~= 0 then redis.call('HINCRBYFLOAT', kpi_key, f, d) end
  end
end
"""

# Many customers in one call. KEYS: the customers' hashes, then one CLV histogram shard and
# one KPI shard (on Redis Cluster all with one hash tag; on a single Redis always shard 00), then
# the other keys the entries name by their KEYS index (phone/e-mail index entries, and an erased
# customer's override and audit stream).
# ARGV[1]: one msgpack array with an entry per customer: {expected offsets ('' = none), new
# offsets, snapshot, scores, old bin|false, new bin|false, {kpi field, delta, ...}, live '1'|'0',
# customer id, {index keys to delete if they still name it}, {index keys to set to it}, {keys to
# delete}}. Byte strings travel as msgpack str (Redis's cmsgpack knows no bin type; Lua strings
# are bytes). One argument instead of eight per customer: redis-py packs every argument in
# Python, which was 17 % of the consumer's CPU.
# ARGV[2] (optional): per customer false or {i, due time|false}: the customer's entry in the due
# index KEYS[i] (its partition's) is set to that time, or removed (see router.ingest.sweep).
# ARGV[3] (optional): {partition, next offset, ...} for the partition offsets hash, the last of KEYS,
# written only if every customer's compare-and-set held: a batch that fits one call stores the
# offsets it covers without a round trip of its own (see StateStore.apply).
# Returns 1/0 per customer: 0 when the stored offsets changed since the read; nothing of that
# customer is written then, index entries included, so a zombie writer that lost its partition
# cannot re-add a number a newer profile removed. Increments are summed per field first and land
# in the one shard pair of the call: readers only ever use the sum over all shards, so which
# shard counts a customer does not matter, and a batch costs one HINCRBY(FLOAT) per distinct
# field, not one per field and shard (HINCRBYFLOAT is ~4 us inside a script; a batch touched
# ~1,800 of them).
_APPLY_LUA = (
    _DELTAS_LUA
    + r"""
local ops = cmsgpack.unpack(ARGV[1])
local dues = ARGV[2] and cmsgpack.unpack(ARGV[2]) or {}
local n = #ops
local ok, hist, kpi = {}, {}, {}
local whole = true
for i = 1, n do
  local op = ops[i]
  local c = KEYS[i]
  if (redis.call('HGET', c, 'm') or '') == op[1] then
    redis.call('HSET', c, 'm', op[2], 's', op[3], 'k', op[4], 'l', op[8])
    local due = dues[i]
    if due then
      if due[2] then
        redis.call('ZADD', KEYS[due[1]], due[2], string.match(c, '[^:]+$'))
      else
        redis.call('ZREM', KEYS[due[1]], string.match(c, '[^:]+$'))
      end
    end
    add_deltas(hist, kpi, op[5], op[6], op[7])
    local cid, unindex, index, drop = op[9], op[10], op[11], op[12]
    for j = 1, #unindex do
      local k = KEYS[unindex[j]]
      if redis.call('GET', k) == cid then redis.call('DEL', k) end
    end
    for j = 1, #index do redis.call('SET', KEYS[index[j]], cid) end
    for j = 1, #drop do redis.call('DEL', KEYS[drop[j]]) end
    ok[i] = 1
  else
    ok[i] = 0
    whole = false
  end
end
flush_deltas(hist, kpi, KEYS[n + 1], KEYS[n + 2])
if whole and ARGV[3] then
  redis.call('HSET', KEYS[#KEYS], unpack(cmsgpack.unpack(ARGV[3])))
end
return ok
"""
)

# The sweep's write (router.ingest.sweep): new scores of customers whose snapshot did not change.
# KEYS: the customers' hashes, one CLV histogram shard, one KPI shard, the partition's due index
# (all one hash tag on a cluster). ARGV[1]: one msgpack array with an entry per customer:
# {expected offsets ('' = none), new offsets|false, scores, old bin|false, new bin|false,
# {kpi field, delta, ...}, due time}. New offsets false: nothing to score (the record is gone or
# erased, or its events now come from another partition), only its due entry goes. Written only
# if the stored offsets are still the expected ones; the new offsets differ from them (SWEEP_MARK),
# so an event writer that read before loses instead.
# Returns 1/0 per customer.
_RESCORE_LUA = (
    _DELTAS_LUA
    + r"""
local ops = cmsgpack.unpack(ARGV[1])
local n = #ops
local due_key = KEYS[n + 3]
local ok, hist, kpi = {}, {}, {}
for i = 1, n do
  local op = ops[i]
  local c = KEYS[i]
  if (redis.call('HGET', c, 'm') or '') == op[1] then
    local member = string.match(c, '[^:]+$')
    if op[2] then
      redis.call('HSET', c, 'm', op[2], 'k', op[3])
      add_deltas(hist, kpi, op[4], op[5], op[6])
      redis.call('ZADD', due_key, op[7], member)
    else
      redis.call('ZREM', due_key, member)
    end
    ok[i] = 1
  else
    ok[i] = 0
  end
end
flush_deltas(hist, kpi, KEYS[n + 1], KEYS[n + 2])
return ok
"""
)

# Many customers' records in one call (KEYS share a hash tag on Redis Cluster).
_READ_MANY_LUA = """
local out = {}
for i, k in ipairs(KEYS) do out[i] = redis.call('HMGET', k, 's', 'm', 'k') end
return out
"""

# A decision's read: snapshot, scores and override in one command (they share a hash tag), so one
# round trip on a cluster too (a pipeline of two costs ~100 us more).
_READ_DECISION_LUA = "return {redis.call('HMGET', KEYS[1], 's', 'k'), redis.call('GET', KEYS[2]) or false}"

# A tier override, only for a live customer (KEYS: customer hash, override; ARGV: value, TTL ms),
# in one step: an erasure applied between a check and the write would leave an override behind.
_SET_OVERRIDE_LUA = """
if redis.call('HEXISTS', KEYS[1], 's') == 0 or redis.call('HGET', KEYS[1], 'l') == '0' then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 1
"""

# Delete an index entry only if it still names this customer (numbers can be shared).
_UNINDEX_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Audit records, one call per batch (on a cluster: one for the global stream, one per hash tag).
# KEYS: the global stream when ARGV[4] is '1', then (customer hash, customer stream) pairs.
# ARGV[1..3]: length caps of the global and the customer streams, the customer streams' TTL;
# ARGV[5]: msgpack array of (record JSON, KEYS index of its customer's hash or 0) pairs.
# A customer's stream is written only while its hash says the customer is live (a snapshot, and
# 'l' not '0'; hashes written before 'l' existed count as live):
# never for an unknown id (random ids would each leave a key behind) nor after an erasure, even
# from a record that another API worker had queued before it. Every write renews the TTL.
_AUDIT_LUA = """
local cap, per, ttl = ARGV[1], ARGV[2], ARGV[3]
local global = ARGV[4] == '1'
local batch = cmsgpack.unpack(ARGV[5])
local live, touched = {}, {}
for i = 1, #batch, 2 do
  local rec, k = batch[i], batch[i + 1]
  if global then redis.call('XADD', KEYS[1], 'MAXLEN', '~', cap, '*', 'r', rec) end
  if k > 0 then
    local known = live[k]
    if known == nil then
      known = redis.call('HEXISTS', KEYS[k], 's') == 1 and redis.call('HGET', KEYS[k], 'l') ~= '0'
      live[k] = known
    end
    if known then
      redis.call('XADD', KEYS[k + 1], 'MAXLEN', '~', per, '*', 'r', rec)
      touched[k + 1] = true
    end
  end
end
for k in pairs(touched) do redis.call('EXPIRE', KEYS[k], ttl) end
return #batch / 2
"""

_enc = msgspec.msgpack.Encoder()
_point_dec = msgspec.msgpack.Decoder(tuple[float, float])


def _queue(pipe: Any, script: AsyncScript, keys: Sequence[Any], *args: Any) -> None:
    """Queue a registered script on a pipeline run by :meth:`StateStore._execute`: EVALSHA only."""
    pipe.evalsha(script.sha, len(keys), *keys, *args)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


_str32 = struct.Struct(">BI").pack


def _lua_bytes(data: bytes) -> msgspec.Raw:
    """``data`` as a msgpack str (str32 header): Redis's cmsgpack reads it as a Lua byte string."""
    return msgspec.Raw(_str32(0xDB, len(data)) + data)


def _packed_rescore(op: WriteOp) -> tuple[Any, ...]:
    """One customer's entry of the rescore script's argument (see ``_RESCORE_LUA``)."""
    expected = op.expected_marks
    wrapped = _lua_bytes(expected) if expected else ""
    if op.due_at is None or not op.snapshot.customer_id:
        return (wrapped, False, False, False, False, [], False)
    kpi = op.kpi
    scores = op.scores
    new_bin = scores.clv_bin
    return (
        wrapped,
        _lua_bytes(encode_marks(op.marks)),
        _lua_bytes(encode_scores(scores)),
        False if op.old_bin is None else op.old_bin,
        False if new_bin is None else new_bin,
        [x for item in kpi.items() for x in item] if kpi else [],
        op.due_at,
    )


def _packed_op(op: WriteOp, keys: list[bytes], store_keys: Keys, *, index: bool) -> tuple[Any, ...]:
    """One customer's entry of the apply script's argument (see ``_APPLY_LUA``).

    Keys the entry names are appended to ``keys`` (the call's KEYS). ``index``: the phone and
    e-mail index entries go into the script (a single Redis); on a cluster their hash tags differ
    from the customer's, so :meth:`StateStore.apply` writes them after the compare-and-set.
    """
    kpi = op.kpi
    incs: list[str | float] = [x for item in kpi.items() for x in item] if kpi else []
    snap = op.snapshot
    scores = op.scores
    new_bin = scores.clv_bin
    marks_b, snapshot_b, scores_b = op.stored = (encode_marks(op.marks), encode_snapshot(snap), encode_scores(scores))
    live = bool(snap.customer_id)
    removes, adds = op.index_remove, op.index_add
    pairs = removes or adds
    unindex: list[int] = []
    reindex: list[int] = []
    if index and pairs:  # profile changes only: most entries name no other key
        for k, _ in removes:
            keys.append(k.encode())
            unindex.append(len(keys))
        for k, _ in adds:
            keys.append(k.encode())
            reindex.append(len(keys))
    drop: list[int] = []
    if not live:
        # An erased customer's override and audit stream share its hash tag: they go with the
        # tombstone, whatever an API worker wrote since the erasure request deleted them.
        h = op.customer_key
        keys += (store_keys.override(h).encode(), store_keys.customer_audit(h).encode())
        drop = [len(keys) - 1, len(keys)]
    expected = op.expected_marks
    return (
        _lua_bytes(expected) if expected else "",  # a new customer's: nothing to wrap
        _lua_bytes(marks_b),
        _lua_bytes(snapshot_b),
        _lua_bytes(scores_b),
        False if op.old_bin is None else op.old_bin,
        False if new_bin is None else new_bin,
        incs,
        "1" if live else "0",
        pairs[0][1] if pairs else "",
        unindex,
        reindex,
        drop,
    )


class StateStore:
    """Reads and atomic writes of customer state, and the other state the service keeps in Redis."""

    def __init__(self, client: RedisClient, prefix: str, hasher: IdentityHasher) -> None:
        self.client = client
        self.keys = Keys(prefix)
        self.hasher = hasher
        self._apply = client.register_script(_APPLY_LUA)
        self._read_many = client.register_script(_READ_MANY_LUA)
        self._read_decision = client.register_script(_READ_DECISION_LUA)
        self._unindex = client.register_script(_UNINDEX_LUA)
        self._audit = client.register_script(_AUDIT_LUA)
        self._set_override = client.register_script(_SET_OVERRIDE_LUA)
        self._rescore = client.register_script(_RESCORE_LUA)
        self._scripts = (
            self._apply,
            self._read_many,
            self._read_decision,
            self._unindex,
            self._audit,
            self._set_override,
            self._rescore,
        )
        # Standalone Redis: any customers share a script call; a cluster: one call per hash tag.
        self._cluster = isinstance(client, RedisCluster)

    def customer_key(self, customer_id: str) -> str:
        """Keyed hash of a customer id (the Redis key never holds the clear id)."""
        return self.hasher.customer_key(customer_id)

    async def _execute(self, queue: Callable[[Any], Awaitable[None]]) -> list[Any]:
        """Run the commands ``queue`` puts on a fresh pipeline (scripts queued by :func:`_queue`).

        Scripts go as plain EVALSHA: redis-py would have a standalone pipeline ask Redis whether it
        knows them first (SCRIPT EXISTS, a round trip more on every call). After a Redis restart the
        first run fails with NOSCRIPT (every call of it: a restarted Redis knows none of them), the
        scripts are loaded and the pipeline runs once more.
        """
        for attempt in range(2):
            pipe = self.client.pipeline(transaction=False)
            await queue(pipe)
            try:
                result: list[Any] = await pipe.execute()
                return result
            except NoScriptError:
                if attempt:
                    raise
                for script in self._scripts:
                    script.sha = str(await self.client.script_load(script.script))
        raise AssertionError("unreachable")

    # -- the consumer's reads and writes -----------------------------------------------------

    async def read_customers(self, customer_keys: Sequence[str]) -> list[CustomerRecord]:
        """Read many customers' records in one round trip (one script call per hash tag group)."""
        groups = self._calls(customer_keys, _READS_PER_CALL)

        async def queue(pipe: Any) -> None:
            for members in groups:
                # bytes: redis-py packs a str argument at twice the cost (1.5 us per key, thousands per batch)
                keys = [self.keys.customer(customer_keys[i]).encode() for i in members]
                _queue(pipe, self._read_many, keys)

        rows: list[Any] = [None] * len(customer_keys)
        for members, result in zip(groups, await self._execute(queue), strict=True):
            for i, row in zip(members, result, strict=True):
                rows[i] = row
        return [record_of(row) for row in rows]

    async def read_customers_and_offsets(
        self, customer_keys: Sequence[str], group: str, topic: str, partitions: Sequence[int]
    ) -> tuple[list[CustomerRecord], dict[int, int | None]]:
        """:meth:`read_customers` and :meth:`stored_offsets_of` in one round trip."""
        groups = self._calls(customer_keys, _READS_PER_CALL)

        async def queue(pipe: Any) -> None:
            pipe.hmget(self.keys.offsets(group, topic), [str(p) for p in partitions])
            for members in groups:
                _queue(pipe, self._read_many, [self.keys.customer(customer_keys[i]).encode() for i in members])

        raw_offsets, *results = await self._execute(queue)
        rows: list[Any] = [None] * len(customer_keys)
        for members, result in zip(groups, results, strict=True):
            for i, row in zip(members, result, strict=True):
                rows[i] = row
        stored = {p: None if v is None else int(v) for p, v in zip(partitions, raw_offsets, strict=True)}
        return [record_of(row) for row in rows], stored

    def _calls(self, customer_keys: Sequence[str], size: int) -> list[list[int]]:
        """Indexes per script call, ``size`` at most: one hash tag each on a cluster, any on a single Redis."""
        if not self._cluster:
            return [list(range(i, min(i + size, len(customer_keys)))) for i in range(0, len(customer_keys), size)]
        by_tag: dict[str, list[list[int]]] = {}
        for i, h in enumerate(customer_keys):
            chunks = by_tag.setdefault(h[:2], [[]])
            if len(chunks[-1]) >= size:
                chunks.append([])
            chunks[-1].append(i)
        return [chunk for chunks in by_tag.values() for chunk in chunks]

    async def read_customer(self, customer_key: str) -> CustomerRecord:
        """Read one customer's record (one round trip)."""
        row: list[Any] = await self.client.hmget(self.keys.customer(customer_key), ["s", "m", "k"])
        return record_of(row)

    def fits_one_call(self, ops: Sequence[WriteOp]) -> bool:
        """Whether :meth:`apply` writes ``ops`` in one script call, so it can store offsets with them."""
        return not self._cluster and 0 < len(ops) <= _WRITES_PER_CALL

    async def apply(self, ops: Sequence[WriteOp], offsets: tuple[str, dict[int, int]] | None = None) -> list[bool]:
        """Write ``ops`` in one pipeline; returns per op whether its compare-and-set succeeded.

        ``offsets`` (offsets key, partition -> next offset) are stored by the same script call if
        :meth:`fits_one_call` and every compare-and-set held (all True returned), else not at all.

        Everything an op writes is conditional on its compare-and-set: snapshot, scores, offsets,
        histogram and counter increments and, on a single Redis, the phone and e-mail index
        entries, all in one script call. On Redis Cluster the index keys live in other slots, so
        they are written right after, only for the ops whose compare-and-set succeeded; readers
        check every index entry against the snapshot it names (:meth:`DecisionService.resolve`),
        so an entry a zombie or a crash left behind yields "unknown", never the wrong customer.
        Partition offsets are stored afterwards by :meth:`store_offsets`, once all the state
        they cover is written.
        """
        groups = self._calls([op.customer_key for op in ops], _WRITES_PER_CALL)
        in_script = not self._cluster
        inline = offsets if offsets is not None and offsets[1] and self.fits_one_call(ops) else None
        calls = self._apply_calls(ops, groups, inline)  # packed once, also if a NOSCRIPT makes it run again

        async def queue(pipe: Any) -> None:
            for keys, args in calls:
                _queue(pipe, self._apply, keys, *args)

        results = await self._execute(queue)
        ok = [False] * len(ops)
        for members, flags in zip(groups, results, strict=True):
            for i, flag in zip(members, flags, strict=True):
                ok[i] = bool(flag)
        if not in_script:
            await self._index_after_cas([op for op, good in zip(ops, ok, strict=True) if good])
        return ok

    def _call_keys(self, group: Sequence[WriteOp]) -> tuple[list[bytes], str]:
        """A write call's first KEYS (the customers' hashes, one CLV histogram shard, one KPI shard) and its shard.

        On a cluster the group's own tag; on a single Redis always shard 00, so the CLV histogram
        the API reads in the background is ~1k fields in one hash, not ~160k spread over 256
        (at 1M customers that read held the worker's event loop for milliseconds per chunk).
        """
        customer = self.keys.customer
        keys = [customer(op.customer_key).encode() for op in group]
        shard = group[0].customer_key[:2] if self._cluster else "00"
        keys += (self.keys.histogram(shard).encode(), self.keys.kpi(shard).encode())
        return keys, shard

    def _apply_calls(
        self, ops: Sequence[WriteOp], groups: list[list[int]], offsets: tuple[str, dict[int, int]] | None = None
    ) -> list[tuple[list[bytes], list[bytes]]]:
        """(KEYS, ARGV) of the apply script per group of ``ops`` (see ``_APPLY_LUA``), one pass over them;
        ``offsets``: stored by the (single) call. Sets each op's ``stored`` bytes."""
        in_script = not self._cluster
        store_keys = self.keys
        calls: list[tuple[list[bytes], list[bytes]]] = []
        for members in groups:
            group = [ops[i] for i in members]
            keys, shard = self._call_keys(group)
            entries: list[tuple[Any, ...]] = []
            # Each customer's due index entry (its partition's, in the call's shard), by KEYS index.
            due_keys: dict[int, int] = {}
            dues: list[Any] = []
            for op in group:
                entries.append(_packed_op(op, keys, store_keys, index=in_script))
                partition = op.partition
                if partition < 0:
                    dues.append(False)
                    continue
                at = due_keys.get(partition)
                if at is None:
                    keys.append(store_keys.due(shard, partition).encode())
                    at = due_keys[partition] = len(keys)
                due_at = op.due_at
                dues.append((at, False if due_at is None else due_at))
            args = [_enc.encode(entries), _enc.encode(dues)]
            if offsets is not None:
                keys.append(offsets[0].encode())
                args.append(_enc.encode([str(x) for pair in offsets[1].items() for x in pair]))
            calls.append((keys, args))
        return calls

    async def _index_after_cas(self, ops: Sequence[WriteOp]) -> None:
        """Redis Cluster: the index entries of ops whose compare-and-set succeeded (other slots)."""
        changed = [op for op in ops if op.index_add or op.index_remove]
        if not changed:
            return

        async def queue(pipe: Any) -> None:
            for op in changed:
                for key, cid in op.index_remove:
                    _queue(pipe, self._unindex, [key], cid)
                for key, cid in op.index_add:
                    pipe.set(key, cid)

        await self._execute(queue)

    # -- the sweep's reads and writes (router.ingest.sweep) -----------------------------------

    async def due_customers(self, partition: int, now: int, limit: int) -> list[str]:
        """Keyed hashes of up to about ``limit`` customers of ``partition`` whose score is due at ``now``.

        Earliest due first; one ZRANGEBYSCORE per due index (one on a single Redis; on a cluster one
        per hash tag, ``limit`` spread over them, in one pipeline).
        """
        keys = self._due_keys(partition)
        per_key = max(1, limit // len(keys))
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.zrangebyscore(key, "-inf", now, start=0, num=per_key)
        due: list[str] = []
        for members in await pipe.execute():
            due += (m.decode() if isinstance(m, bytes) else m for m in members)
        return due

    def _due_keys(self, partition: int) -> list[str]:
        if self._cluster:
            return [self.keys.due_shard(shard, partition) for shard in range(HIST_SHARDS)]
        return [self.keys.due("00", partition)]

    async def read_due(self, customer_keys: Sequence[str]) -> list[CustomerRecord]:
        """:meth:`read_customers` for the sweep: one script call after the other, not in a pipeline.

        A pipeline's calls run back to back on Redis (a request waits for all of them) and a pipeline
        holding scripts first asks whether Redis knows them (SCRIPT EXISTS, one more round trip each
        time); a script called on its own sends EVALSHA and loads it only on NOSCRIPT.
        """
        groups = self._calls(customer_keys, _SWEEP_READS_PER_CALL)
        results = []
        for members in groups:
            results.append(await self._read_many([self.keys.customer(customer_keys[i]).encode() for i in members]))
        rows: list[Any] = [None] * len(customer_keys)
        for members, result in zip(groups, results, strict=True):
            for i, row in zip(members, result, strict=True):
                rows[i] = row
        return [record_of(row) for row in rows]

    async def rescore(self, ops: Sequence[WriteOp], partition: int) -> list[bool]:
        """Write the sweep's new scores (see ``_RESCORE_LUA``); per op whether its compare-and-set held.

        One script call per 100 customers (a call runs alone on Redis: API reads slip in between),
        one after the other like :meth:`read_due`.
        """
        groups = self._calls([op.customer_key for op in ops], _SWEEP_WRITES_PER_CALL)
        calls = self._rescore_calls(ops, groups, partition)
        results = [await self._rescore(keys, args) for keys, args in calls]
        ok = [False] * len(ops)
        for members, flags in zip(groups, results, strict=True):
            for i, flag in zip(members, flags, strict=True):
                ok[i] = bool(flag)
        return ok

    def _rescore_calls(
        self, ops: Sequence[WriteOp], groups: list[list[int]], partition: int
    ) -> list[tuple[list[bytes], list[bytes]]]:
        """(KEYS, ARGV) of the rescore script per group of ``ops`` (see ``_RESCORE_LUA``)."""
        calls: list[tuple[list[bytes], list[bytes]]] = []
        for members in groups:
            group = [ops[i] for i in members]
            keys, shard = self._call_keys(group)
            keys.append(self.keys.due(shard, partition).encode())
            calls.append((keys, [_enc.encode([_packed_rescore(op) for op in group])]))
        return calls

    async def due_count(self, partition: int, now: int) -> int:
        """Customers of ``partition`` whose score is due at ``now`` (a metric, not on any hot path)."""
        pipe = self.client.pipeline(transaction=False)
        for key in self._due_keys(partition):
            pipe.zcount(key, "-inf", now)
        return sum(int(n) for n in await pipe.execute())

    async def store_offsets(self, offsets: dict[str, dict[int, int]]) -> None:
        """Store partition -> next offset under each offsets key (after the state they cover)."""
        pipe = self.client.pipeline(transaction=False)
        for key, parts in offsets.items():
            if parts:
                pipe.hset(key, mapping={str(p): str(o) for p, o in parts.items()})
        await pipe.execute()

    async def stored_offsets(self, group: str, topic: str) -> dict[int, int]:
        """Next offsets per partition as last written with the state they cover."""
        raw: dict[Any, Any] = await self.client.hgetall(self.keys.offsets(group, topic))
        return {int(k): int(v) for k, v in raw.items()}

    async def stored_offsets_of(self, group: str, topic: str, partitions: Sequence[int]) -> dict[int, int | None]:
        """The stored next offset of each of ``partitions`` (None where none is stored): one HMGET."""
        raw: list[Any] = await self.client.hmget(self.keys.offsets(group, topic), [str(p) for p in partitions])
        return {p: None if v is None else int(v) for p, v in zip(partitions, raw, strict=True)}

    # -- what the consumer published (dead letters, alerts): once per origin -----------------

    async def already_published(self, keys: Sequence[str]) -> list[bool]:
        """Whether each marker key exists (all share the ``{pub}`` hash tag: one MGET)."""
        if not keys:
            return []
        raw: list[Any] = await self.client.mget(list(keys))
        return [v is not None for v in raw]

    async def mark_published(self, keys: Sequence[str], ttl_s: int) -> None:
        """Remember that these were published (acknowledged by the broker) for ``ttl_s``."""
        if not keys:
            return
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.set(key, b"1", ex=ttl_s)
        await pipe.execute()

    # -- the audit trail -----------------------------------------------------------------------

    async def append_audit(
        self, entries: Sequence[tuple[str, str | None]], *, maxlen: int, per_customer: int, ttl_s: int
    ) -> None:
        """Append (record JSON, customer keyed hash or None) entries to the audit streams.

        Every record goes to the global stream; a customer's own stream gets it only while the
        customer is live (see ``_AUDIT_LUA``). One script call on a single Redis; on a cluster one
        for the global stream and one per hash tag, in one pipeline.
        """
        calls: list[tuple[bool, Sequence[tuple[str, str | None]]]]
        if not self._cluster:
            calls = [(True, entries)]
        else:
            by_tag: dict[str, list[tuple[str, str | None]]] = {}
            for rec, h in entries:
                if h:
                    by_tag.setdefault(h[:2], []).append((rec, h))
            calls = [(True, [(rec, None) for rec, _ in entries]), *((False, part) for part in by_tag.values())]
        stream = self.keys.audit()

        async def queue(pipe: Any) -> None:
            for with_global, part in calls:
                keys = [stream] if with_global else []
                index: dict[str, int] = {}
                pairs: list[str | int] = []
                for rec, h in part:
                    k = 0
                    if h:
                        k = index.get(h, 0)
                        if not k:
                            keys += (self.keys.customer(h), self.keys.customer_audit(h))
                            k = index[h] = len(keys) - 1
                    pairs += (rec, k)
                args = (maxlen, per_customer, max(1, ttl_s), "1" if with_global else "0", _enc.encode(pairs))
                _queue(pipe, self._audit, keys, *args)

        await self._execute(queue)

    async def customer_audit(self, h: str, count: int) -> list[bytes]:
        """The customer's most recent audit records (JSON), newest first."""
        rows: Any = await self.client.xrevrange(self.keys.customer_audit(h), count=count)
        return [fields[b"r"] for _, fields in rows]

    async def audit_range(self, low: str, high: str, count: int) -> list[tuple[str, bytes]]:
        """Up to ``count`` (entry id, record JSON) of the global audit stream from ``low`` to ``high``, oldest first."""
        rows: Any = await self.client.xrange(self.keys.audit(), min=low, max=high, count=count)
        return [(_text(entry), fields[b"r"]) for entry, fields in rows]

    async def audit_range_newest(self, high: str, low: str, count: int) -> list[tuple[str, bytes]]:
        """The same, newest first (from ``high`` down to ``low``)."""
        rows: Any = await self.client.xrevrange(self.keys.audit(), max=high, min=low, count=count)
        return [(_text(entry), fields[b"r"]) for entry, fields in rows]

    # -- the request path --------------------------------------------------------------------

    async def resolve_index(self, index_key: str) -> str | None:
        """Customer id behind a phone or e-mail index key, if any."""
        value: Any = await self.client.get(index_key)
        return value.decode() if isinstance(value, bytes) else value

    async def read_for_decision(self, h: str) -> tuple[CustomerRecord, Override | None]:
        """Snapshot, scores and override of the customer with keyed hash ``h``: one command.

        Offsets are not read: a decision never writes.
        """
        row: Any = await self._read_decision([self.keys.customer(h), self.keys.override(h)])
        (raw_snap, raw_scores), raw_override = row
        record = CustomerRecord(
            snapshot=decode_snapshot(raw_snap) if raw_snap else None,
            marks={},
            scores=decode_scores(raw_scores),
            raw_marks=None,
        )
        return record, decode_override(raw_override)

    # -- people's actions --------------------------------------------------------------------

    async def set_override(self, h: str, override: Override, ttl_ms: int) -> bool:
        """Store a tier override if the customer is live (False otherwise); its Redis TTL is its
        expiry, so an expired override is simply gone and the decision path never compares clocks."""
        keys = [self.keys.customer(h), self.keys.override(h)]
        done: Any = await self._set_override(keys, [encode_override(override), max(1, ttl_ms)])
        return bool(done)

    async def delete_override(self, h: str) -> bool:
        """Remove the override; False when there was none."""
        deleted: Any = await self.client.delete(self.keys.override(h))
        return bool(deleted)

    async def forget_customer(self, h: str) -> None:
        """Delete what the request side keeps of a customer (override, audit stream), at once.

        The snapshot and the phone/e-mail index entries (the rest of :meth:`Keys.of_customer`)
        are the consumer's: it erases them when it applies the erasure event, exactly once, and
        deletes override and audit stream again with the tombstone, in case a request wrote them
        in between.
        """
        snapshot_key = self.keys.customer(h)
        await self.client.delete(*(k for k in self.keys.of_customer(h) if k != snapshot_key))

    async def claim_replay(self, digest: str, ttl_s: int) -> bool:
        """Record a signed request as processed; False when it already was (a replay)."""
        fresh: Any = await self.client.set(self.keys.webhook_replay(digest), b"1", nx=True, ex=max(1, ttl_s))
        return bool(fresh)

    # -- population-wide reads (background work, never on the request path) ----------------

    async def _shards(self, key_of: Callable[[int], str]) -> AsyncIterator[dict[Any, Any]]:
        """Every shard hash, a few per round trip, yielding to the event loop between them.

        At a million customers the shards hold hundreds of thousands of fields: read in one go,
        parsing them would stall the process's event loop (and its requests) for a long moment.
        """
        for start in range(0, HIST_SHARDS, _SHARDS_PER_TRIP):
            pipe = self.client.pipeline(transaction=False)
            for shard in range(start, min(HIST_SHARDS, start + _SHARDS_PER_TRIP)):
                pipe.hgetall(key_of(shard))
            for shard_map in await pipe.execute():
                yield shard_map
            await asyncio.sleep(0)

    async def portfolio(self) -> PortfolioCounters:
        """All portfolio counters, summed over the shards."""
        totals: dict[str, float] = dict.fromkeys(KPI_TOTALS, 0.0)
        daily: dict[int, dict[str, float]] = {}
        churn: dict[int, int] = {}
        cost: dict[int, float] = {}
        async for shard_map in self._shards(self.keys.kpi_shard):
            for raw_field, raw_value in shard_map.items():
                field = raw_field.decode() if isinstance(raw_field, bytes) else raw_field
                value = float(raw_value)
                kind, _, rest = field.partition(":")
                if kind == "d":
                    day, _, name = rest.partition(":")
                    bucket = daily.setdefault(int(day), {})
                    bucket[name] = bucket.get(name, 0.0) + value
                elif kind == "cb":
                    churn[int(rest)] = churn.get(int(rest), 0) + round(value)
                elif kind == "sc":
                    cost[int(rest)] = cost.get(int(rest), 0.0) + value
                else:
                    totals[field] = totals.get(field, 0.0) + value
        return PortfolioCounters(
            totals=totals, daily=daily, churn_hist=churn, clv_hist=await self.histogram(), service_cost=cost
        )

    async def histogram(self) -> dict[int, int]:
        """The whole CLV histogram (bin -> customers), summed over its shards."""
        merged: dict[int, int] = {}
        async for shard_map in self._shards(self.keys.histogram_shard):
            for k, v in shard_map.items():
                b = int(k)
                merged[b] = merged.get(b, 0) + int(v)
        return merged

    async def churn_trend(
        self, today: int, point: tuple[float, float], keep_days: int
    ) -> dict[int, tuple[float, float]]:
        """Record today's (mean churn, high-risk share) and return every day's; drops older days."""
        key = self.keys.churn_trend()
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(key, str(today), _enc.encode(point))
        pipe.hgetall(key)
        _, raw = await pipe.execute()
        trend: dict[int, tuple[float, float]] = {int(k): _point_dec.decode(v) for k, v in raw.items()}
        stale = [d for d in trend if d <= today - keep_days]
        if stale:
            await self.client.hdel(key, *(str(d) for d in stale))
            for d in stale:
                del trend[d]
        return trend

    # -- what every process should run --------------------------------------------------------

    async def announce(self, kind: str, announcement: Announcement) -> None:
        """Tell every process to run this ``kind`` (``model`` or ``policy``) file (see ``router.state.follow``)."""
        await self.client.set(self.keys.active(kind), msgspec.json.encode(announcement))

    async def announced(self, kind: str) -> Announcement | None:
        """The last announcement of ``kind``, or None (never announced, or unreadable)."""
        raw: Any = await self.client.get(self.keys.active(kind))
        if raw is None:
            return None
        try:
            return msgspec.json.decode(raw, type=Announcement)
        except msgspec.DecodeError:
            return None

    # -- the shadow model's report -----------------------------------------------------------

    async def put_shadow_report(self, report: bytes) -> None:
        await self.client.set(self.keys.shadow_report(), report)

    async def shadow_report(self) -> bytes | None:
        raw: Any = await self.client.get(self.keys.shadow_report())
        return bytes(raw) if raw is not None else None

    # -- the policy simulation: the whole population, streamed (never on the request path) ----

    async def scan_customers(
        self, *, chunk: int = 500, sample: float = 1.0
    ) -> AsyncIterator[list[tuple[str, bytes, bytes | None]]]:
        """Every customer's (keyed hash, stored snapshot, stored scores), ``chunk`` at a time.

        SCAN walks the keyspace a few hundred keys per call and the records are read with
        plain pipelined HMGETs, not a script: Redis serves other clients between the commands,
        so the decisions' reads are not held back behind a population-wide read. ``sample``
        (0-1] keeps the customers whose keyed hash falls in that share of the hash space: a
        uniform sample, the same customers every time. Tombstones (erased) come too; the
        caller skips them. A customer written during the scan may be seen twice or not at all
        (SCAN's guarantee covers keys that exist throughout).
        """
        cut = int(sample * 65536)
        pending: list[str] = []
        async for key in self.client.scan_iter(match=self.keys.customer_pattern(), count=chunk):
            h = customer_hash_of(key)
            if cut >= 65536 or int(h[:4], 16) < cut:
                pending.append(h)
            if len(pending) >= chunk:
                yield await self._read_snapshots(pending)
                pending = []
        if pending:
            yield await self._read_snapshots(pending)

    async def _read_snapshots(self, hashes: list[str]) -> list[tuple[str, bytes, bytes | None]]:
        pipe = self.client.pipeline(transaction=False)
        for h in hashes:
            pipe.hmget(self.keys.customer(h), ["s", "k"])
        rows = await pipe.execute()
        return [(h, raw_s, raw_k) for h, (raw_s, raw_k) in zip(hashes, rows, strict=True) if raw_s]

    async def scan_overrides(self) -> dict[str, Override]:
        """Every tier override in force, by the customer's keyed hash (few: people set them)."""
        hashes = [
            customer_hash_of(k) async for k in self.client.scan_iter(match=self.keys.override_pattern(), count=1000)
        ]
        pipe = self.client.pipeline(transaction=False)
        for h in hashes:
            pipe.get(self.keys.override(h))
        found = {h: decode_override(raw) for h, raw in zip(hashes, await pipe.execute(), strict=True)}
        return {h: o for h, o in found.items() if o is not None}

    async def customer_ids(self, hashes: Sequence[str]) -> dict[str, str]:
        """Clear customer ids of keyed hashes, read from their snapshots (erased ones are missing)."""
        pipe = self.client.pipeline(transaction=False)
        for h in hashes:
            pipe.hget(self.keys.customer(h), "s")
        out: dict[str, str] = {}
        for h, raw in zip(hashes, await pipe.execute(), strict=True):
            snap = decode_snapshot(raw) if raw else None
            if snap is not None and snap.customer_id:
                out[h] = snap.customer_id
        return out
