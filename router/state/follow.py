"""Following what the fleet should run: the model (and policy) announced in Redis.

An admin reload (``POST /v1/admin/model/reload``) loads the file in the worker that got the
request and then announces it (:meth:`StateStore.announce`: path, SHA-256, version). Every other
process, API workers and state consumers alike, checks the announcement every
``model.follow_s`` seconds with one GET and, when it names a file other than the one it runs,
loads that path, checks the file's SHA-256 against the announcement, and swaps it in. A process
started later follows the announcement from its start. A file that does not load, or whose bytes
are not the announced ones (not deployed on this host yet, say), is logged and the process keeps
what it runs; it tries again when the announcement changes.

Polling rather than pub/sub: a message published while a process reconnects is lost, a key is
not, and one GET every few seconds per process costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from router.errors import REDIS_FAULTS
from router.state.records import Announcement
from router.state.store import StateStore

__all__ = ["Follower"]

log = logging.getLogger("router.state.follow")


class Follower:
    """Applies the announcements of one ``kind`` to this process (a task with an explicit stop)."""

    def __init__(
        self,
        store: StateStore,
        kind: str,
        interval_s: float,
        current: Callable[[], str],
        apply: Callable[[Announcement], Awaitable[object]],
    ) -> None:
        self.store = store
        self.kind = kind
        self.interval_s = interval_s
        self.current = current
        """SHA-256 of the file this process runs now ("" when none)."""
        self.apply = apply
        """Load and swap in the announced file; raises if it cannot (the process keeps its own)."""
        self.seen: Announcement | None = None
        """The last announcement acted on (applied, already in force, or refused)."""
        self._task: asyncio.Task[None] | None = None

    async def check(self) -> bool:
        """Act on the announcement if it is new; True when a new file was swapped in."""
        try:
            announced = await self.store.announced(self.kind)
        except REDIS_FAULTS as exc:
            log.warning("cannot read the announced %s: %s", self.kind, type(exc).__name__)
            return False
        if announced is None or announced == self.seen:
            return False
        self.seen = announced
        if announced.sha256 == self.current():
            return False
        try:
            await self.apply(announced)
        except Exception as exc:  # ModelError, PolicyError, OSError: keep what runs, say why
            log.error(
                "announced %s %s (%s) not loaded, keeping the current one: %s",
                self.kind, announced.version, announced.path, exc,
            )  # fmt: skip
            return False
        log.info(
            "following the announced %s %s (%s, by %s)", self.kind, announced.version, announced.path, announced.by
        )
        return True

    async def start(self) -> None:
        """Apply the current announcement now, then check every ``interval_s`` in the background."""
        await self.check()
        if self.interval_s > 0:
            self._task = asyncio.create_task(self._loop(), name=f"follow-{self.kind}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.check()
