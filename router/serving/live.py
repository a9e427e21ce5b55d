"""What every request reads and operations can swap: the churn model, the policy, the CLV distribution.

Model and policy are swapped by reassigning one attribute (:meth:`Live.reload_model`,
:meth:`Live.reload_policy`); a request reads each reference once, so it sees either the old or
the new object, never a mix, and no request is dropped. The CLV distribution is the population
histogram, re-read in the background (:meth:`Live.start`).

A policy applied from the console is stored in Redis as a numbered version
(:mod:`router.state.policies`); every worker polls the number in force once a second
(:meth:`Live.follow_policy`) and loads a number it has not loaded yet, so all workers of all
hosts switch within about a second. At start-up the version in force in Redis wins over the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import time
from datetime import UTC, date, datetime

from router.churn.model import ChurnModel, ModelError
from router.core.scoring import ClvDistribution
from router.errors import REDIS_FAULTS
from router.ops import metrics
from router.policy import Policy, PolicyError, load_policy, policy_from_text
from router.state.policies import PolicyVersions
from router.state.store import StateStore

__all__ = ["Live", "report_calendars"]

log = logging.getLogger("router.serving.live")
_REFRESH_MIN_S = 5.0
_REFRESH_MAX_S = 60.0
POLICY_POLL_S = 1.0
"""How often each worker asks Redis which policy version is in force (one GET)."""


class Live:
    """The current model, policy and population distribution of this process."""

    def __init__(
        self,
        model: ChurnModel | None,
        policy: Policy,
        background: StateStore,
        *,
        model_path: str,
        policy_path: str,
        business: str | None = None,
    ) -> None:
        self.model = model
        self.business = business
        """``ROUTER_MODEL_BUSINESS``: a model whose card is for the other kind of business is refused."""
        self.policy = policy
        self.distribution = ClvDistribution({})
        self.background = background
        """A client with a budget of seconds: for the population-wide reads."""
        self.model_path = model_path
        self.policy_path = policy_path
        self.versions = PolicyVersions(background.client, background.keys)
        self.policy_number: int | None = None
        """Number of the stored policy version in force here (None: the policy file's)."""
        self._refresher: asyncio.Task[None] | None = None
        self._follower: asyncio.Task[None] | None = None
        self._follow_failing = False
        self._refresh_every_s = _REFRESH_MIN_S

    @classmethod
    def load(cls, background: StateStore, *, model_path: str, policy_path: str, business: str | None = None) -> Live:
        """Model and policy from their files; a model that does not load leaves decisions rule-based."""
        model: ChurnModel | None
        try:
            model = ChurnModel.load(model_path, business=business)
            metrics.MODEL_INFO.info({"version": model.version, "path": model_path})
        except Exception as exc:  # ModelError, or a card malformed in a way the loader trips over
            log.error("churn model not loaded, decisions are rule-based and marked degraded: %s", exc)
            model = None
        policy = load_policy(policy_path)
        metrics.POLICY_INFO.info({"version": policy.version})
        report_calendars(policy)
        return cls(model, policy, background, model_path=model_path, policy_path=policy_path, business=business)

    # -- population ----------------------------------------------------------------------------

    async def start(self) -> None:
        await self.refresh_distribution()
        await self.follow_policy()
        self._refresher = asyncio.create_task(self._refresh_loop(), name="clv-distribution")
        self._follower = asyncio.create_task(self._follow_loop(), name="policy-version")

    async def stop(self) -> None:
        for task in (self._refresher, self._follower):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._refresher = self._follower = None

    async def refresh_distribution(self) -> None:
        """Reload the population's CLV histogram (off the request path, on the background client)."""
        started = time.perf_counter()
        try:
            self.distribution = ClvDistribution(await self.background.histogram())
        except REDIS_FAULTS as exc:
            log.warning("CLV histogram refresh failed: %s", type(exc).__name__)
        # A big population takes a while to read, and each chunk of it holds the event loop for a few
        # milliseconds (requests wait meanwhile): refresh less often rather than keep Redis and this
        # worker busy with it (about 1 % of the time at most; a percentile moves slowly).
        took = time.perf_counter() - started
        self._refresh_every_s = min(_REFRESH_MAX_S, max(_REFRESH_MIN_S, 100 * took))

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_every_s)
            await self.refresh_distribution()
            report_calendars(self.policy)  # the years ahead move on at midnight of New Year's Eve

    # -- the policy version in force (Redis) ---------------------------------------------------

    async def follow_policy(self) -> None:
        """Load the stored policy version in force if this worker has not loaded it yet."""
        try:
            number = await self.versions.active_number()
            if number is None or number == self.policy_number:
                return
            stored = await self.versions.get(number)
        except REDIS_FAULTS as exc:
            if not self._follow_failing:  # once per outage, not every second
                log.warning("policy version check failed, keeping %s: %s", self.policy.version, type(exc).__name__)
            self._follow_failing = True
            return
        self._follow_failing = False
        if stored is None:
            return
        try:
            new = policy_from_text(stored.text, f"policy version {number}")
        except PolicyError as exc:  # validated when applied; only a hand-edited Redis gets here
            log.error("stored policy version %d not loaded, %s stays in force: %s", number, self.policy.version, exc)
            self.policy_number = number  # once, not every second
            return
        old, self.policy = self.policy, new
        self.policy_number = number
        metrics.POLICY_INFO.info({"version": new.version})
        log.info("policy %s replaced by %s (stored version %d)", old.version, new.version, number)

    async def _follow_loop(self) -> None:
        while True:
            await asyncio.sleep(POLICY_POLL_S)
            await self.follow_policy()

    # -- reloads -------------------------------------------------------------------------------

    def reload_policy(self, path: str | None = None) -> tuple[Policy, Policy]:
        """Load ``path`` (default: configured) and swap it in; (old, new). PolicyError keeps the old."""
        new = load_policy(path or self.policy_path)
        old, self.policy = self.policy, new
        metrics.POLICY_INFO.info({"version": new.version})
        report_calendars(new)
        log.info("policy %s replaced by %s", old.version, new.version)
        return old, new

    async def reload_model(
        self, path: str | None = None, sha256: str | None = None
    ) -> tuple[ChurnModel | None, ChurnModel]:
        """Load ``path`` (default: configured) and swap it in; (old, new). ModelError keeps the old.

        ``sha256``: the file must be exactly this one (an announced model, see ``router.state.follow``).
        """
        target = path or self.model_path
        # Loading takes tens of milliseconds: off the event loop, so requests keep being served.
        new = await asyncio.to_thread(functools.partial(ChurnModel.load, target, business=self.business))
        if sha256 is not None and new.sha256 != sha256:
            raise ModelError(f"{target} is not the announced file (sha256 {new.sha256[:12]}.. != {sha256[:12]}..)")
        old, self.model = self.model, new
        metrics.MODEL_INFO.info({"version": new.version, "path": str(target)})
        log.info("churn model %s replaced by %s", old.version if old else "none", new.version)
        return old, new


def report_calendars(policy: Policy, today: date | None = None) -> None:
    """``router_policy_calendar_last_holiday_timestamp_seconds`` of every calendar that ever closes.

    A calendar open round the clock without holidays (``24x7``) needs none and is left out; one
    with closed hours but no holiday at all reports 0, so the alert on it fires at once.
    """
    today = today or datetime.now(UTC).date()
    reported = set()
    for name, calendar in policy.calendars.items():
        if calendar.always_open:
            continue
        last = calendar.last_holiday(today)
        at = datetime(last.year, last.month, last.day, tzinfo=UTC).timestamp() if last else 0.0
        metrics.CALENDAR_LAST_HOLIDAY.labels(name).set(at)
        reported.add(name)
    for gone in _reported_calendars - reported:  # a reload removed or reopened it
        if os.environ.get(metrics.MULTIPROC_ENV):
            # Series cannot be removed in multiprocess mode: NaN makes its alert condition false.
            metrics.CALENDAR_LAST_HOLIDAY.labels(gone).set(math.nan)
        else:
            metrics.CALENDAR_LAST_HOLIDAY.remove(gone)
    _reported_calendars.clear()
    _reported_calendars.update(reported)


_reported_calendars: set[str] = set()
