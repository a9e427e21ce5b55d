"""Policy versions in Redis: the one in force for every API worker, and the history behind it.

Applying a policy (from the console) stores its TOML text as a new numbered version and
points ``active`` at it, in one script call, only if ``active`` is still what the person
applying it saw (two people applying at once: the second gets a conflict, not a silent
overwrite). Every worker's :class:`~router.serving.live.Live` polls ``active`` and loads a
new number it has not seen. A rollback is a new version with an old text, so the history
only grows and says who did what, when. Keys: :meth:`~router.state.keys.Keys.policy_active`
and its neighbours (all under the ``{policy}`` hash tag, so the script is cluster-safe).
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from router.state.keys import Keys
from router.state.store import RedisClient

__all__ = ["STORED_VERSION_PREFIX", "PolicyVersion", "PolicyVersions", "VersionConflict"]

_HISTORY_SHOWN = 100


STORED_VERSION_PREFIX = "version:"
"""An announced policy "path" that names a stored version (``version:7``) instead of a file."""


class PolicyVersion(msgspec.Struct, frozen=True, kw_only=True):
    """One applied policy: its number, the policy's own version string, who, when, why, the text."""

    number: int
    version: str
    """The ``version`` field of the policy file (what every decision reports)."""
    author: str
    """Name of the API key that applied it."""
    at: float
    note: str
    text: str
    previous: int | None
    """Number of the version it replaced (None: it replaced the policy file of the deployment)."""


class VersionConflict(Exception):
    """``active`` moved since the caller read it: someone else applied a policy meanwhile."""


# KEYS: active, history, the new version's hash. ARGV: expected active ('' = none), number, fields.
_PUBLISH_LUA = """
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[3], 'r', ARGV[3])
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(PolicyVersion)


class PolicyVersions:
    """Read and apply policy versions (one instance per client)."""

    def __init__(self, client: RedisClient, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._publish = client.register_script(_PUBLISH_LUA)

    async def active_number(self) -> int | None:
        """Number of the version in force, or None when no policy was ever applied (the file rules)."""
        raw: Any = await self.client.get(self.keys.policy_active())
        return int(raw) if raw is not None else None

    async def get(self, number: int) -> PolicyVersion | None:
        raw: Any = await self.client.hget(self.keys.policy_version(number), "r")
        return _dec.decode(raw) if raw is not None else None

    async def history(self, limit: int = _HISTORY_SHOWN) -> list[PolicyVersion]:
        """The latest ``limit`` versions, newest first."""
        numbers: Any = await self.client.lrange(self.keys.policy_history(), -limit, -1)
        pipe = self.client.pipeline(transaction=False)
        for n in reversed(numbers):
            pipe.hget(self.keys.policy_version(int(n)), "r")
        return [_dec.decode(raw) for raw in await pipe.execute() if raw is not None]

    async def publish(self, *, text: str, version: str, author: str, note: str, expected: int | None) -> PolicyVersion:
        """Store ``text`` as a new version and put it in force, if ``expected`` is still in force.

        The caller has validated ``text`` (the same loader as at start-up). Raises
        :class:`VersionConflict` when another version was applied since ``expected`` was read.
        """
        number = int(await self.client.incr(self.keys.policy_seq()))
        record = PolicyVersion(
            number=number, version=version, author=author, at=time.time(), note=note, text=text, previous=expected
        )
        done = await self._publish(
            [self.keys.policy_active(), self.keys.policy_history(), self.keys.policy_version(number)],
            ["" if expected is None else str(expected), str(number), _enc.encode(record)],
        )
        if not done:
            raise VersionConflict(f"another policy version was applied meanwhile (expected {expected})")
        return record
