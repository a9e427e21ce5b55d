"""The connectors' outbox in Redis: write-backs wait here, across restarts, until they land.

One stream per connector, read by the consumer group ``writeback``. A write-back is added to the
stream (:meth:`Outbox.enqueue`), delivered to one ``router connect`` process, and then moved by
one script, atomically, to where it belongs next:

* landed: acknowledged, deleted, and recorded in the capped ``landed`` stream (:meth:`Outbox.landed`);
* to be tried again: acknowledged, deleted and added to the ``later`` sorted set with its due time
  as score (:meth:`Outbox.later`); :meth:`Outbox.promote` puts due ones back into the stream;
* given up on: acknowledged, deleted and added to the ``dead`` stream with its cause (:meth:`Outbox.dead`).

A process that dies holding a write-back leaves it delivered but unacknowledged; another one takes
it over after a while (``XAUTOCLAIM``, :meth:`Outbox.reclaim`). So every write-back is in exactly
one place at any time, and none is lost while Redis keeps its data (run Redis with AOF for the
outbox to survive a Redis restart too). Redis Cluster: every key of the outbox shares the hash tag
``cx``, so the scripts and the multi-stream read stay on one node.

This module moves bytes; what a write-back means is :mod:`router.connectors`'s business.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from redis.exceptions import ResponseError

from router.state.keys import Keys
from router.state.store import RedisClient

__all__ = ["GROUP", "Delivery", "Outbox", "OutboxStatus"]

GROUP = "writeback"
"""Consumer group of the ``router connect`` processes on every outbox stream."""
_LANDED_KEEP = 1000
_DEAD_KEEP = 100_000

# KEYS: stream, dedupe key. ARGV: job, dedupe seconds (0: none). Returns the entry id, or false
# when the ticket was routed within the window (a duplicate delivery or a trigger loop).
_ENQUEUE_LUA = """
if tonumber(ARGV[2]) > 0 and not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then
  return false
end
return redis.call('XADD', KEYS[1], '*', 'j', ARGV[1])
"""

# A followed helpdesk's new tickets and its new watermark, together or not at all. KEYS: stream,
# mark. ARGV: expected mark ('' = none yet), new mark, jobs... Returns 0 when another process
# moved the mark meanwhile (its write-backs are the ones that count).
_FOLLOW_LUA = """
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[1] then return 0 end
for i = 3, #ARGV do redis.call('XADD', KEYS[1], '*', 'j', ARGV[i]) end
redis.call('SET', KEYS[2], ARGV[2])
return 1
"""

# KEYS: stream, landed, health. ARGV: group, entry id, landed record, cap, now.
_LANDED_LUA = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'r', ARGV[3])
redis.call('HSET', KEYS[3], 'landed_at', ARGV[5])
return 1
"""

# KEYS: stream, later, health. ARGV: group, entry id, job, due (ms), now, cause.
_LATER_LUA = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
redis.call('HSET', KEYS[3], 'failed_at', ARGV[5], 'failure', ARGV[6])
return 1
"""

# KEYS: stream, dead, health. ARGV: group, entry id, job, cap, now, cause.
_DEAD_LUA = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'j', ARGV[3], 'cause', ARGV[6])
redis.call('HSET', KEYS[3], 'failed_at', ARGV[5], 'failure', ARGV[6])
return 1
"""

# KEYS: later, stream. ARGV: now (ms), limit. Due write-backs back into the stream.
_PROMOTE_LUA = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, job in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'j', job)
  redis.call('ZREM', KEYS[1], job)
end
return #due
"""

# KEYS: dead, stream. ARGV: dead entry id, job (attempts reset). One dead letter back into the outbox.
_REQUEUE_LUA = """
if redis.call('XDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('XADD', KEYS[2], '*', 'j', ARGV[2])
  return 1
end
return 0
"""


class Delivery(msgspec.Struct, frozen=True):
    """A write-back handed to this process: settle it with landed, later or dead."""

    connector: str
    entry_id: str
    job: bytes
    taken_over: bool = False
    """Delivered before to a process that did not settle it (it may have written part of it)."""


class OutboxStatus(msgspec.Struct, frozen=True, kw_only=True):
    queued: int
    """In the stream: waiting or being written (includes ``in_flight``)."""
    in_flight: int
    """Delivered to a process and not yet settled."""
    delayed: int
    """Waiting for their next attempt."""
    dead_letters: int
    landed_at: float | None
    failed_at: float | None
    failure: str | None
    polled_at: float | None
    poll_failure: str | None
    mark: str | None


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _time(value: Any) -> float | None:
    return float(value) if value not in (None, b"", "") else None


class Outbox:
    """The outbox streams of every connector under one key prefix."""

    def __init__(self, client: RedisClient, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._enqueue = client.register_script(_ENQUEUE_LUA)
        self._follow = client.register_script(_FOLLOW_LUA)
        self._landed = client.register_script(_LANDED_LUA)
        self._later = client.register_script(_LATER_LUA)
        self._dead = client.register_script(_DEAD_LUA)
        self._promote = client.register_script(_PROMOTE_LUA)
        self._requeue = client.register_script(_REQUEUE_LUA)

    # -- producing ------------------------------------------------------------------------------

    async def enqueue(self, connector: str, ticket: str, job: bytes, dedupe_s: int) -> bool:
        """Add a write-back; False when ``ticket`` was routed through ``connector`` within ``dedupe_s``."""
        keys = [self.keys.outbox(connector), self.keys.ticket_routed(connector, ticket)]
        entry: Any = await self._enqueue(keys, [job, max(0, dedupe_s)])
        return entry is not None

    async def follow(self, connector: str, expected: str | None, mark: str, jobs: Sequence[bytes]) -> bool:
        """Add a followed helpdesk's write-backs and move its watermark, if it is still ``expected``."""
        keys = [self.keys.outbox(connector), self.keys.connector_mark(connector)]
        moved: Any = await self._follow(keys, [expected or "", mark, *jobs])
        return bool(moved)

    async def mark(self, connector: str) -> str | None:
        """The watermark of a followed helpdesk (None before its first poll)."""
        return _text(await self.client.get(self.keys.connector_mark(connector)))

    # -- consuming ------------------------------------------------------------------------------

    async def ensure_group(self, connector: str) -> None:
        """Create the consumer group (from the stream's start: nothing added before is skipped)."""
        try:
            await self.client.xgroup_create(self.keys.outbox(connector), GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, consumer: str, connectors: Sequence[str], count: int, block_ms: int) -> list[Delivery]:
        """New write-backs for ``consumer``: up to ``count`` per connector, waiting ``block_ms`` for any."""
        if not connectors:
            return []
        names = {self.keys.outbox(c): c for c in connectors}
        reply: Any = await self.client.xreadgroup(
            GROUP, consumer, dict.fromkeys(names, ">"), count=count, block=block_ms
        )
        return [
            _delivery(names[_text(stream) or ""], entry_id, fields)
            for stream, entries in _streams(reply)
            for entry_id, fields in entries
        ]

    async def reclaim(self, consumer: str, connector: str, idle_ms: int, count: int) -> list[Delivery]:
        """Write-backs delivered to a process that has held them longer than ``idle_ms`` (it died)."""
        reply: Any = await self.client.xautoclaim(
            self.keys.outbox(connector), GROUP, consumer, min_idle_time=idle_ms, start_id="0-0", count=count
        )
        entries = reply[1] if reply else []
        return [_delivery(connector, entry_id, fields, taken_over=True) for entry_id, fields in entries if fields]

    async def landed(self, d: Delivery, record: bytes, now: float) -> None:
        keys = [
            self.keys.outbox(d.connector),
            self.keys.outbox_landed(d.connector),
            self.keys.connector_health(d.connector),
        ]
        await self._landed(keys, [GROUP, d.entry_id, record, _LANDED_KEEP, repr(now)])

    async def later(self, d: Delivery, job: bytes, due: float, now: float, cause: str) -> None:
        keys = [
            self.keys.outbox(d.connector),
            self.keys.outbox_later(d.connector),
            self.keys.connector_health(d.connector),
        ]
        await self._later(keys, [GROUP, d.entry_id, job, int(due * 1000), repr(now), cause])

    async def dead(self, d: Delivery, job: bytes, now: float, cause: str) -> None:
        keys = [
            self.keys.outbox(d.connector),
            self.keys.outbox_dead(d.connector),
            self.keys.connector_health(d.connector),
        ]
        await self._dead(keys, [GROUP, d.entry_id, job, _DEAD_KEEP, repr(now), cause])

    async def promote(self, connector: str, now: float, limit: int = 100) -> int:
        """Move write-backs whose next attempt is due back into the stream; returns how many."""
        keys = [self.keys.outbox_later(connector), self.keys.outbox(connector)]
        moved: Any = await self._promote(keys, [int(now * 1000), limit])
        return int(moved)

    # -- operations -----------------------------------------------------------------------------

    async def dead_letters(self, connector: str, start: str = "-", count: int = 500) -> list[tuple[str, bytes, str]]:
        """(entry id, job, cause) of the oldest dead letters from ``start`` (an entry id, ``(id`` excludes it)."""
        entries: Any = await self.client.xrange(self.keys.outbox_dead(connector), min=start, count=count)
        return [(_text(i) or "", f.get(b"j", b""), _text(f.get(b"cause")) or "") for i, f in entries]

    async def requeue(self, connector: str, entry_id: str, job: bytes) -> bool:
        """Move one dead letter back into the outbox (with ``job`` as it should be retried)."""
        moved: Any = await self._requeue(
            [self.keys.outbox_dead(connector), self.keys.outbox(connector)], [entry_id, job]
        )
        return bool(moved)

    async def recent_landed(self, connector: str, count: int = 100) -> list[bytes]:
        """The newest landed records, newest first."""
        entries: Any = await self.client.xrevrange(self.keys.outbox_landed(connector), count=count)
        return [f[b"r"] for _, f in entries]

    async def note_poll(self, connector: str, now: float, failure: str | None) -> None:
        """Record a followed helpdesk's poll (a failure keeps the last successful time)."""
        key = self.keys.connector_health(connector)
        if failure is None:
            await self.client.hset(key, mapping={"polled_at": repr(now), "poll_failure": ""})
        else:
            await self.client.hset(key, mapping={"poll_failed_at": repr(now), "poll_failure": failure})

    async def oldest(self, connector: str, when: Callable[[bytes], float | None], sample: int = 100) -> float | None:
        """Unix time of the oldest write-back not landed yet, as ``when`` reads it from a job; None when none waits.

        ``when`` gives a job's time (its decision's, so a retried write-back keeps its age); for a job it
        cannot read, the time it was queued in the stream counts. Looks at the stream's first ``sample``
        entries (queued and in flight, in the order they were queued) and the ``sample`` delayed ones due
        soonest: exact while no more wait in either place, else the oldest of those looked at, which can
        read younger than the truth, never older (a retried write-back goes back to the stream's end).
        """
        pipe = self.client.pipeline(transaction=False)
        pipe.xrange(self.keys.outbox(connector), count=sample)
        pipe.zrange(self.keys.outbox_later(connector), 0, sample - 1)
        entries, delayed = await pipe.execute()
        times: list[float] = []
        for entry_id, fields in entries:
            t = when((fields or {}).get(b"j", b""))
            times.append(t if t is not None else int((_text(entry_id) or "0").split("-")[0]) / 1000)
        times += [t for t in map(when, delayed) if t is not None]
        return min(times, default=None)

    async def status(self, connector: str) -> OutboxStatus:
        stream = self.keys.outbox(connector)
        pipe = self.client.pipeline(transaction=False)
        pipe.xlen(stream)
        pipe.xpending(stream, GROUP)
        pipe.zcard(self.keys.outbox_later(connector))
        pipe.xlen(self.keys.outbox_dead(connector))
        pipe.hgetall(self.keys.connector_health(connector))
        pipe.get(self.keys.connector_mark(connector))
        queued, pending, delayed, dead, health, mark = await pipe.execute(raise_on_error=False)
        in_flight = pending.get("pending", 0) if isinstance(pending, dict) else 0  # NOGROUP before the first start
        h = {(_text(k) or ""): v for k, v in health.items()} if isinstance(health, dict) else {}
        return OutboxStatus(
            queued=queued if isinstance(queued, int) else 0,
            in_flight=int(in_flight),
            delayed=int(delayed),
            dead_letters=int(dead),
            landed_at=_time(h.get("landed_at")),
            failed_at=_time(h.get("failed_at")),
            failure=_text(h.get("failure")) or None,
            polled_at=_time(h.get("polled_at")),
            poll_failure=_text(h.get("poll_failure")) or None,
            mark=_text(mark),
        )


def _streams(reply: Any) -> list[tuple[Any, list[Any]]]:
    """XREADGROUP's reply as (stream, entries) pairs."""
    if not reply:
        return []
    return [(stream, entries) for stream, entries in (reply.items() if isinstance(reply, dict) else reply)]


def _delivery(connector: str, entry_id: Any, fields: Any, *, taken_over: bool = False) -> Delivery:
    return Delivery(connector, _text(entry_id) or "", (fields or {}).get(b"j", b""), taken_over)
