"""A tiny circuit breaker for the request path's Redis calls.

After ``threshold`` consecutive faults it opens: requests skip Redis (and answer degraded)
for ``reset_s``, then one request probes. A dead Redis then costs no timeout per request,
and a recovered one is used again by itself.
"""

from __future__ import annotations

import logging
import time

__all__ = ["Breaker"]

log = logging.getLogger("router.serving.breaker")


class Breaker:
    """Open after ``threshold`` consecutive faults, probe after ``reset_s``."""

    __slots__ = ("_failures", "_open_until", "reset_s", "threshold")

    def __init__(self, threshold: int = 3, reset_s: float = 1.0) -> None:
        self.threshold = threshold
        self.reset_s = reset_s
        self._failures = 0
        self._open_until = 0.0

    @property
    def open(self) -> bool:
        return self._failures >= self.threshold

    def allow(self) -> bool:
        """May a request try Redis? While open, one probe per ``reset_s`` gets through."""
        if self._failures < self.threshold:
            return True
        now = time.monotonic()
        if now < self._open_until:
            return False
        self._open_until = now + self.reset_s  # this request is the probe; others keep skipping
        return True

    def success(self) -> None:
        if self._failures:
            if self._failures >= self.threshold:
                log.info("Redis answers again: circuit closed")
            self._failures = 0

    def failure(self) -> None:
        self._failures += 1
        if self._failures == self.threshold:
            log.warning("Redis failing: circuit open, decisions degraded until a probe succeeds")
        if self._failures >= self.threshold:
            self._open_until = time.monotonic() + self.reset_s
