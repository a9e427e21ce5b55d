"""Is Redis answering? A background ping per process, published as ``router_redis_up``.

Redis is a dependency both processes degrade around (the API answers rule-based decisions,
the consumer pauses and retries), so its health is reported by this gauge, the
``RouterRedisDown`` alert and ``/health/detail``, never by readiness: a readiness probe that
failed with Redis would take every API pod out of its Service exactly when degraded answers
are needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from redis.exceptions import RedisError

from router.ops import metrics
from router.state.store import RedisClient

__all__ = ["RedisProbe"]

log = logging.getLogger("router.state.probe")

_FAULTS: tuple[type[Exception], ...] = (RedisError, OSError, TimeoutError, RuntimeError)
"""What a ping can raise when Redis is gone, slow or back (see ``router.errors.REDIS_FAULTS``)."""


class RedisProbe:
    """Pings Redis every ``interval_s`` (each ping bounded by ``timeout_s``) and keeps the answer."""

    def __init__(self, client: RedisClient, *, interval_s: float = 2.0, timeout_s: float = 1.0) -> None:
        self.client = client
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.up: bool | None = None
        """None until the first ping has answered or failed."""
        self.error: str | None = None
        """Class name of the last failure while down."""
        self.since = time.time()
        """When ``up`` last changed."""
        self._task: asyncio.Task[None] | None = None

    async def check(self) -> bool:
        """Ping now; updates the gauge and the state."""
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.client.ping()
        except _FAULTS as exc:
            self._set(False, type(exc).__name__)
        else:
            self._set(True, None)
        return bool(self.up)

    def _set(self, up: bool, error: str | None) -> None:
        if up != self.up:
            self.since = time.time()
            if self.up is not None:
                (log.info if up else log.warning)("Redis %s", "answers again" if up else f"does not answer ({error})")
        self.up, self.error = up, error
        metrics.REDIS_UP.set(1 if up else 0)

    def describe(self) -> str:
        """One line for health answers: ``ok`` or ``unavailable (TimeoutError) for 12 s``."""
        if self.up is None:
            return "not checked yet"
        if self.up:
            return "ok"
        return f"unavailable ({self.error}) for {time.time() - self.since:.0f} s"

    async def start(self) -> None:
        await self.check()
        self._task = asyncio.create_task(self._run(), name="redis-probe")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.check()
