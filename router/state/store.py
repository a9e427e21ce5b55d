"""Customer state in Redis: key layout, atomic apply, lookups.

Key layout (``P`` is the configured prefix, ``H`` the keyed hash of the customer id,
``T`` the first two hex digits of a hash, used as the Redis Cluster hash tag)::

    P:{T}:c:H      hash  s = snapshot (msgpack, zlib when long), m = applied offsets per partition,
                         k = derived scores (msgpack)
    P:{T}:clvh     hash  CLV histogram shard: bin -> customers (counts may be negative)
    P:{T}:kpi      hash  portfolio counter shard (totals, churn bins, per day)
    P:{T}:p:Hphone string customer id of a phone number (E.164, keyed hash)
    P:{T}:e:Hemail string customer id of an e-mail address
    P:{off}:G:topic hash  partition -> next offset to read (consumer group G)

A customer's snapshot, its offsets and the histogram and counter shards its write lands in
share one hash tag, so a single Lua script updates them atomically even on Redis Cluster:
that is what makes the consumer's effect exactly-once (see :mod:`router.ingest.consumer`). Only the
sum of a field over the 256 shards means anything (a script call's increments land in one
shard pair: its hash tag's on a cluster, always 00 on a single Redis), so readers always sum.
Nothing is keyed by a clear identifier.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from router.core.identity import IdentityHasher
from router.core.reducer import Snapshot

__all__ = [
    "HIST_SHARDS",
    "KPI_TOTALS",
    "CustomerRecord",
    "Keys",
    "PortfolioCounters",
    "Scores",
    "StateStore",
    "WriteOp",
    "connect",
    "decode_record",
    "decode_snapshot",
    "encode_marks",
    "encode_snapshot",
]

HIST_SHARDS = 256
_SHARDS_PER_TRIP = 16
_READS_PER_CALL = 500
_WRITES_PER_CALL = 250
"""Customers per script call. A script runs alone on Redis: a call covering a whole batch held
every API read back for ~10 ms; calls of this size take about a millisecond each and share one
pipeline (one round trip), so the API's reads slip in between them."""
KPI_TOTALS = ("customers", "active_subscriptions", "mrr", "cac_sum", "clv_sum")

RedisClient = aioredis.Redis | RedisCluster


class Scores(msgspec.Struct, array_like=True):
    """Scores derived from the snapshot when it was last written (not part of the fold)."""

    churn: float = 0.0
    clv: float = 0.0
    clv_bin: int | None = None
    alerted: bool = False
    """True while churn is above the alert threshold: an alert fires only on the upward crossing."""
    scored_at: int = 0
    model_id: str = ""
    """``ChurnModel.model_id`` of the model that computed ``churn`` ("" when none did)."""
    as_of: int = 0
    valid_until: int = 0
    """``churn`` is exactly what that model returns for this snapshot at any second in [as_of, valid_until)."""


class CustomerRecord(msgspec.Struct):
    """What Redis holds for one customer."""

    snapshot: Snapshot | None
    marks: dict[int, int]
    scores: Scores | None
    raw_marks: bytes | None
    """The stored offsets exactly as read, for compare-and-set."""


class WriteOp(msgspec.Struct):
    """One customer's atomic write, built by the consumer."""

    customer_key: str
    expected_marks: bytes | None
    marks: dict[int, int]
    snapshot: Snapshot
    scores: Scores
    old_bin: int | None
    index_add: list[tuple[str, str]]
    """(index key, customer id) pairs to set."""
    index_remove: list[tuple[str, str]]
    """(index key, customer id) pairs to delete if they still point at this customer."""
    kpi: dict[str, float] = {}
    """Increments of portfolio counters (see :meth:`StateStore.portfolio`), applied with the snapshot."""
    stored: tuple[bytes, bytes, bytes] | None = None
    """(offsets, snapshot, scores) exactly as :meth:`StateStore.apply` sent them (set by it)."""


class PortfolioCounters(msgspec.Struct):
    """Portfolio counters summed over all shards (maintained exactly once by the consumer)."""

    totals: dict[str, float]
    """customers, active_subscriptions, mrr, cac_sum, clv_sum (current values)."""
    daily: dict[int, dict[str, float]]
    """Epoch day -> new_customers, new_subscriptions, cancellations, churned_mrr, expansion_mrr,
    contraction_mrr, new_mrr (by event day)."""
    churn_hist: dict[int, int]
    """Churn-risk bin (0..19, 5 points each) -> customers."""
    clv_hist: dict[int, int]
    """CLV histogram bin -> customers (see :class:`router.core.scoring.ClvDistribution`)."""


class Keys:
    """Key names; one place so the consumer, the API and erasure agree."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def customer(self, h: str) -> str:
        return f"{self.prefix}:{{{h[:2]}}}:c:{h}"

    def histogram(self, h: str) -> str:
        return f"{self.prefix}:{{{h[:2]}}}:clvh"

    def histogram_shard(self, shard: int) -> str:
        return f"{self.prefix}:{{{shard:02x}}}:clvh"

    def kpi(self, h: str) -> str:
        return f"{self.prefix}:{{{h[:2]}}}:kpi"

    def kpi_shard(self, shard: int) -> str:
        return f"{self.prefix}:{{{shard:02x}}}:kpi"

    def phone(self, h: str) -> str:
        return f"{self.prefix}:{{{h[:2]}}}:p:{h}"

    def email(self, h: str) -> str:
        return f"{self.prefix}:{{{h[:2]}}}:e:{h}"

    def shadow_report(self) -> str:
        return f"{self.prefix}:{{shadow}}:report"

    def offsets(self, group: str, topic: str) -> str:
        return f"{self.prefix}:{{off}}:{group}:{topic}"


# Many customers in one call. KEYS: the customers' hashes, then one CLV histogram shard and
# one KPI shard (on Redis Cluster all with one hash tag; on a single Redis always shard 00).
# ARGV[1]: one msgpack array with an entry per customer: {expected offsets ('' = none), new
# offsets, snapshot, scores, old bin|false, new bin|false, {kpi field, delta, ...}}. Byte
# strings travel as msgpack str (Redis's cmsgpack knows no bin type; Lua strings are bytes).
# One argument instead of eight per customer: redis-py packs every argument in Python, which
# was 17 % of the consumer's CPU.
# Returns 1/0 per customer: 0 when the stored offsets changed since the read (nothing of that
# customer is written then). Increments are summed per field first and land in the one shard
# pair of the call: readers only ever use the sum over all shards, so which shard counts a
# customer does not matter, and a batch costs one HINCRBY(FLOAT) per distinct field, not one
# per field and shard (HINCRBYFLOAT is ~4 us inside a script; a batch touched ~1,800 of them).
_APPLY_LUA = r"""
local ops = cmsgpack.unpack(ARGV[1])
local n = #ops
local ok, hist, kpi = {}, {}, {}
for i = 1, n do
  local op = ops[i]
  local c = KEYS[i]
  if (redis.call('HGET', c, 'm') or '') == op[1] then
    redis.call('HSET', c, 'm', op[2], 's', op[3], 'k', op[4])
    local old, new = op[5], op[6]
    if old ~= new then
      if old then hist[old] = (hist[old] or 0) - 1 end
      if new then hist[new] = (hist[new] or 0) + 1 end
    end
    local incs = op[7]
    for j = 1, #incs - 1, 2 do
      local f = incs[j]
      kpi[f] = (kpi[f] or 0) + incs[j + 1]
    end
    ok[i] = 1
  else
    ok[i] = 0
  end
end
local hist_key, kpi_key = KEYS[n + 1], KEYS[n + 2]
for b, d in pairs(hist) do
  if d ~= 0 then redis.call('HINCRBY', hist_key, b, d) end
end
for f, d in pairs(kpi) do
  if d ~= 0 then redis.call('HINCRBYFLOAT', kpi_key, f, d) end
end
return ok
"""

# Many customers' records in one call (KEYS share a hash tag on Redis Cluster).
_READ_LUA = """
local out = {}
for i, k in ipairs(KEYS) do out[i] = redis.call('HMGET', k, 's', 'm', 'k') end
return out
"""

# Delete an index entry only if it still names this customer (numbers can be shared).
_UNINDEX_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

COMPRESS_SNAPSHOTS_OVER = 512
"""Stored snapshots longer than this many bytes of msgpack are zlib-compressed."""
_enc = msgspec.msgpack.Encoder()
_snapshot_dec = msgspec.msgpack.Decoder(Snapshot)
_scores_dec = msgspec.msgpack.Decoder(Scores)
_marks_dec = msgspec.msgpack.Decoder(dict[int, int])


def encode_snapshot(snap: Snapshot) -> bytes:
    """A snapshot as stored: msgpack, zlib-compressed when long.

    A customer with months of daily activity carries ~90 day buckets: ~1.6 KB of msgpack that
    zlib's fastest level shrinks about four times (~25 µs to compress, ~9 µs to decompress),
    taking the Redis hash from ~2.1 KB to ~0.9 KB. Short snapshots, most of them, stay as they are.
    """
    raw = _enc.encode(snap)
    return zlib.compress(raw, 1) if len(raw) > COMPRESS_SNAPSHOTS_OVER else raw


def decode_snapshot(raw: bytes) -> Snapshot:
    """The snapshot in stored bytes (compressed or not: msgpack of a Snapshot starts with an array
    header, 0x9X or 0xDC, a zlib stream with 0x78, so both read back without a flag)."""
    return _snapshot_dec.decode(zlib.decompress(raw) if raw[:1] == b"x" else raw)


def encode_marks(marks: dict[int, int]) -> bytes:
    """Applied offsets as stored (the compare-and-set compares these bytes)."""
    return _enc.encode(marks)


def _lua_bytes(data: bytes) -> msgspec.Raw:
    """``data`` as a msgpack str (str32 header): Redis's cmsgpack reads it as a Lua byte string."""
    return msgspec.Raw(b"\xdb" + len(data).to_bytes(4, "big") + data)


def _packed_op(op: WriteOp) -> tuple[Any, ...]:
    """One customer's entry of the apply script's argument (see ``_APPLY_LUA``)."""
    incs: list[str | float] = []
    for field, delta in op.kpi.items():
        incs += (field, delta)
    new_bin = op.scores.clv_bin
    marks, snapshot, scores = op.stored = (encode_marks(op.marks), encode_snapshot(op.snapshot), _enc.encode(op.scores))
    return (
        _lua_bytes(op.expected_marks) if op.expected_marks else "",  # a new customer's: nothing to wrap
        _lua_bytes(marks),
        _lua_bytes(snapshot),
        _lua_bytes(scores),
        False if op.old_bin is None else op.old_bin,
        False if new_bin is None else new_bin,
        incs,
    )


def connect(url: str, *, cluster: bool, timeout_s: float | None = None) -> RedisClient:
    """A Redis (or Redis Cluster) client; nothing is sent until first use."""
    if cluster:
        return RedisCluster.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    return aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)


class StateStore:
    """Reads and atomic writes of customer state."""

    def __init__(self, client: RedisClient, prefix: str, hasher: IdentityHasher) -> None:
        self.client = client
        self.keys = Keys(prefix)
        self.hasher = hasher
        self._apply_sha = ""
        self._read_sha = ""
        self._unindex_sha = ""
        # Standalone Redis: any customers share a script call; a cluster: one call per hash tag.
        self._cluster = isinstance(client, RedisCluster)

    async def load_scripts(self) -> None:
        """Load the Lua scripts (again after a Redis restart flushed them)."""
        self._apply_sha = str(await self.client.script_load(_APPLY_LUA))
        self._read_sha = str(await self.client.script_load(_READ_LUA))
        self._unindex_sha = str(await self.client.script_load(_UNINDEX_LUA))

    def customer_key(self, customer_id: str) -> str:
        """Keyed hash of a customer id (the Redis key never holds the clear id)."""
        return self.hasher.customer_key(customer_id)

    async def read_customers(self, customer_keys: Sequence[str]) -> list[CustomerRecord]:
        """Read many customers' records in one round trip (one script call per hash tag group)."""
        if not self._read_sha:
            await self.load_scripts()
        groups = self._calls(customer_keys, _READS_PER_CALL)
        try:
            rows = await self._read_groups(customer_keys, groups)
        except NoScriptError:
            await self.load_scripts()
            rows = await self._read_groups(customer_keys, groups)
        return [_record(row) for row in rows]

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

    async def _read_groups(self, customer_keys: Sequence[str], groups: list[list[int]]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for members in groups:
            # bytes: redis-py packs a str argument at twice the cost (1.5 us per key, thousands per batch)
            keys = [self.keys.customer(customer_keys[i]).encode() for i in members]
            pipe.execute_command("EVALSHA", self._read_sha, len(keys), *keys)
        rows: list[Any] = [None] * len(customer_keys)
        for members, result in zip(groups, await pipe.execute(), strict=True):
            for i, row in zip(members, result, strict=True):
                rows[i] = row
        return rows

    async def read_customer(self, customer_key: str) -> CustomerRecord:
        """Read one customer's record (one round trip)."""
        row: list[Any] = await self.client.hmget(self.keys.customer(customer_key), ["s", "m", "k"])
        return _record(row)

    async def resolve_index(self, index_key: str) -> str | None:
        """Customer id behind a phone or e-mail index key, if any."""
        value: Any = await self.client.get(index_key)
        return value.decode() if isinstance(value, bytes) else value

    async def apply(self, ops: Sequence[WriteOp]) -> list[bool]:
        """Write ``ops`` in one pipeline; returns per op whether its compare-and-set succeeded.

        Index entries are written before the snapshots: they are idempotent, so a crash
        between the two leaves nothing that a replay of the same events would not fix.
        Partition offsets are stored afterwards by :meth:`store_offsets`, once all the state
        they cover is written.
        """
        if not self._apply_sha:
            await self.load_scripts()
        try:
            return await self._apply(ops)
        except NoScriptError:
            await self.load_scripts()
            return await self._apply(ops)

    async def _apply(self, ops: Sequence[WriteOp]) -> list[bool]:
        pipe = self.client.pipeline(transaction=False)
        n_index = 0
        for op in ops:
            for key, cid in op.index_remove:
                pipe.execute_command("EVALSHA", self._unindex_sha, 1, key, cid)
                n_index += 1
            for key, cid in op.index_add:
                pipe.set(key, cid)
                n_index += 1
        groups = self._calls([op.customer_key for op in ops], _WRITES_PER_CALL)
        for members in groups:
            keys = [self.keys.customer(ops[i].customer_key).encode() for i in members]
            # On a cluster the group's own tag; on a single Redis always shard 00, so the CLV histogram
            # the API reads in the background is ~1k fields in one hash, not ~160k spread over 256
            # (at 1M customers that read held the worker's event loop for milliseconds per chunk).
            shard = ops[members[0]].customer_key[:2] if self._cluster else "00"
            keys += (self.keys.histogram(shard).encode(), self.keys.kpi(shard).encode())
            packed = _enc.encode([_packed_op(ops[i]) for i in members])
            pipe.execute_command("EVALSHA", self._apply_sha, len(keys), *keys, packed)
        results: list[Any] = await pipe.execute()
        ok = [False] * len(ops)
        for members, flags in zip(groups, results[n_index : n_index + len(groups)], strict=True):
            for i, flag in zip(members, flags, strict=True):
                ok[i] = bool(flag)
        return ok

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
        """All portfolio counters, summed over the shards (background work, never on the request path)."""
        totals: dict[str, float] = dict.fromkeys(KPI_TOTALS, 0.0)
        daily: dict[int, dict[str, float]] = {}
        churn: dict[int, int] = {}
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
                else:
                    totals[field] = totals.get(field, 0.0) + value
        return PortfolioCounters(totals=totals, daily=daily, churn_hist=churn, clv_hist=await self.histogram())

    async def histogram(self) -> dict[int, int]:
        """The whole CLV histogram (bin -> customers), summed over its shards."""
        merged: dict[int, int] = {}
        async for shard_map in self._shards(self.keys.histogram_shard):
            for k, v in shard_map.items():
                b = int(k)
                merged[b] = merged.get(b, 0) + int(v)
        return merged


def decode_record(stored: tuple[bytes, bytes, bytes]) -> CustomerRecord:
    """A record from the (offsets, snapshot, scores) bytes a write stored."""
    return _record((stored[1], stored[0], stored[2]))


def _record(row: Sequence[bytes | None]) -> CustomerRecord:
    raw_snap, raw_marks, raw_scores = row
    return CustomerRecord(
        snapshot=decode_snapshot(raw_snap) if raw_snap else None,
        marks=_marks_dec.decode(raw_marks) if raw_marks else {},
        scores=_scores_dec.decode(raw_scores) if raw_scores else None,
        raw_marks=raw_marks,
    )
