"""The SLA clock: when is a first response due?

Two clocks, as in real helpdesks:

* ``calendar``: the target counts every hour of the day (elapsed real time).
* ``business_hours``: only the open intervals of a :class:`Calendar` count, in the
  calendar's own time zone, skipping closed weekdays, listed holidays and the public holidays
  of the calendar's country (generated per year as the clock reaches it, so they never run out).

Instants are handled as integer microseconds since the Unix epoch, so adding the hours of
two deadlines one after the other gives exactly the deadline of their sum (no float drift),
and daylight-saving changes are handled by converting every opening and closing wall time
to UTC once per day: an interval opens at the first instant the wall clock shows its
opening time and closes likewise (a day of 08:00-18:00 is ten real hours on either side of
a change, a 00:00-24:00 day is 23 or 25 real hours on the change days, and a time the clock
jumps over in spring counts from the jump).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

__all__ = ["Calendar", "Clock", "deadline"]

Clock = Literal["business_hours", "calendar"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_US_PER_HOUR = 3_600_000_000
_DAY_MINUTES = 24 * 60
_MAX_DAYS = 366 * 20
"""Give up after twenty years of calendar days: only a pathological target gets there."""
_CACHE_MAX = 50_000
"""Days of converted intervals kept per calendar (a live service touches a few dozen)."""
YEARS_AHEAD = 2
"""Public holidays are generated when a calendar is built for this year and the next two; later
years when a deadline first reaches them."""

Interval = tuple[int, int]


class Calendar:
    """A compiled business-hours calendar: time zone, weekly open intervals and holidays.

    ``week`` holds seven sequences (Monday first) of ``(open, close)`` minutes after local
    midnight, ``0 <= open < close <= 1440``; several intervals per day are allowed, and an
    empty day is closed. Intervals touching each other are merged. A calendar without any
    open minute is rejected, because no business-hours deadline could ever be reached.

    ``holidays`` are listed closed days; ``public_holidays`` maps a year to its public holidays
    (``router.policy.public_holidays.holidays_of``), asked for this year and the next
    :data:`YEARS_AHEAD` when the calendar is built and for any other year when first needed.
    """

    __slots__ = ("_days", "_public", "_week", "_years", "always_open", "holidays", "name", "tz")

    def __init__(
        self,
        name: str,
        tz: str | ZoneInfo,
        week: Sequence[Sequence[Interval]],
        holidays: Iterable[date] = (),
        *,
        public_holidays: Callable[[int], Iterable[date]] | None = None,
        today: date | None = None,
    ) -> None:
        if len(week) != 7:
            raise ValueError(f"calendar {name!r}: week needs 7 days (Monday first), got {len(week)}")
        self.name = name
        self.tz = tz if isinstance(tz, ZoneInfo) else ZoneInfo(tz)
        self._week: tuple[tuple[Interval, ...], ...] = tuple(_normalise(name, day) for day in week)
        if not any(self._week):
            raise ValueError(f"calendar {name!r}: no open hours in the week")
        self.holidays: frozenset[date] = frozenset(holidays)
        self._public = public_holidays
        self._years: dict[int, frozenset[date]] = {}
        if public_holidays is not None:
            this_year = (today or datetime.now(UTC).date()).year
            for year in range(this_year, this_year + YEARS_AHEAD + 1):
                self._public_year(year)
        # Open round the clock: business hours and calendar hours are the same thing, so
        # deadline() can skip the walk over days (also the fast path for the 24x7 calendar).
        self.always_open = (
            not self.holidays and public_holidays is None and all(d == ((0, _DAY_MINUTES),) for d in self._week)
        )
        self._days: dict[int, tuple[Interval, ...]] = {}

    def __repr__(self) -> str:
        return f"Calendar({self.name!r}, {self.tz.key!r})"

    def is_holiday(self, day: date) -> bool:
        """Closed all day: a listed holiday or a public holiday of the calendar's country."""
        return day in self.holidays or (self._public is not None and day in self._public_year(day.year))

    def last_holiday(self, today: date) -> date | None:
        """The last holiday known up to the end of ``today``'s year + :data:`YEARS_AHEAD` (None: none at
        all). Generated public holidays go on beyond it; a listed holiday does not."""
        known = set(self.holidays)
        if self._public is not None:
            for year in range(today.year, today.year + YEARS_AHEAD + 1):
                known |= self._public_year(year)
        return max(known) if known else None

    def _public_year(self, year: int) -> frozenset[date]:
        got = self._years.get(year)
        if got is None:
            assert self._public is not None
            got = self._years[year] = frozenset(self._public(year))
        return got

    def open_intervals(self, day: date) -> tuple[Interval, ...]:
        """Open intervals of local ``day`` as UTC epoch microseconds ``(open, close)``."""
        return self._day(day.toordinal())

    def _day(self, ordinal: int) -> tuple[Interval, ...]:
        cached = self._days.get(ordinal)
        if cached is not None:
            return cached
        day = date.fromordinal(ordinal)
        spans: tuple[Interval, ...] = ()
        if not self.is_holiday(day):
            out = []
            for start, end in self._week[day.weekday()]:
                a, b = self._instant(day, start), self._instant(day, end)
                # An interval lying wholly inside a spring-forward gap has no real length.
                if b > a:
                    out.append((a, b))
            spans = tuple(out)
        if len(self._days) >= _CACHE_MAX:
            self._days.clear()
        self._days[ordinal] = spans
        return spans

    def _instant(self, day: date, minute: int) -> int:
        """The first instant at which the wall clock shows ``minute`` of ``day`` (or later)."""
        if minute == _DAY_MINUTES:
            day, minute = day + timedelta(days=1), 0
        local = datetime(day.year, day.month, day.day, minute // 60, minute % 60, tzinfo=self.tz)
        first = (local - _EPOCH) // _US  # fold=0: an autumn wall time that happens twice -> first time
        other = (local.replace(fold=1) - _EPOCH) // _US
        if first <= other:
            return first
        # The wall time falls in the spring-forward gap (the clock jumps over it): the office
        # opens or closes at the jump, when the clock first shows a later time. The jump lies
        # between the two readings; find it by bisection (once per such day, then cached).
        wall = local.replace(tzinfo=None)
        lo, hi = other, first
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if (_EPOCH + timedelta(microseconds=mid)).astimezone(self.tz).replace(tzinfo=None) >= wall:
                hi = mid
            else:
                lo = mid
        return hi

    def add(self, start_us: int, need_us: int) -> int:
        """Instant (epoch us) when ``need_us`` microseconds of open time after ``start_us`` are used up."""
        if need_us <= 0:
            return start_us
        ordinal = (_EPOCH + timedelta(microseconds=start_us)).astimezone(self.tz).toordinal()
        t = start_us
        for _ in range(_MAX_DAYS):
            for a, b in self._day(ordinal):
                if b <= t:
                    continue
                s = a if a > t else t
                avail = b - s
                if need_us <= avail:
                    return s + need_us
                need_us -= avail
            ordinal += 1
        raise ValueError(f"calendar {self.name!r}: target not reachable within {_MAX_DAYS} days")


def _normalise(name: str, day: Sequence[Interval]) -> tuple[Interval, ...]:
    spans = sorted((int(a), int(b)) for a, b in day)
    merged: list[Interval] = []
    for a, b in spans:
        if not 0 <= a < b <= _DAY_MINUTES:
            raise ValueError(f"calendar {name!r}: bad interval {a}-{b} (minutes, 0 <= open < close <= 1440)")
        if merged and a < merged[-1][1]:
            raise ValueError(f"calendar {name!r}: interval {a}-{b} overlaps {merged[-1][0]}-{merged[-1][1]}")
        if merged and a == merged[-1][1]:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return tuple(merged)


def deadline(start: datetime, hours: float, clock: Clock, calendar: Calendar) -> datetime:
    """When a target of ``hours`` that starts at ``start`` runs out (UTC, timezone-aware).

    ``calendar`` clock: ``start + hours``. ``business_hours`` clock: only open time of
    ``calendar`` counts; a start outside open hours begins counting at the next opening,
    and a deadline that uses up an interval exactly falls on its closing time. A target of
    zero hours is due at ``start``. Raises ``ValueError`` for a naive ``start`` or a
    negative or non-finite target.
    """
    if start.tzinfo is None or start.utcoffset() is None:
        raise ValueError("start must be timezone-aware")
    if not math.isfinite(hours) or hours < 0:
        raise ValueError(f"hours must be a finite number >= 0, got {hours!r}")
    t = (start - _EPOCH) // _US
    need = round(hours * _US_PER_HOUR)
    if clock == "business_hours" and not calendar.always_open:
        t = calendar.add(t, need)
    else:
        t += need
    return _EPOCH + timedelta(microseconds=t)
