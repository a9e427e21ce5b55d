"""The SLA clock: business hours across weekends, holidays and DST changes."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.policy.sla import Calendar, deadline

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
H = 60  # minutes per hour, for readable intervals

WORKDAYS = [[(8 * H, 18 * H)]] * 5 + [[], []]
DE_HOLIDAYS = [date(2026, 12, 25), date(2026, 12, 26), date(2027, 1, 1)]

DE = Calendar("de_office", BERLIN, WORKDAYS, DE_HOLIDAYS)
NY_LUNCH = Calendar("ny_office", NEW_YORK, [[(9 * H, 12 * H), (13 * H, 17 * H)]] * 5 + [[], []])
# Open every night 01:00-05:00: straddles both Berlin DST switches (02:00-03:00 local).
NIGHT = Calendar("night", BERLIN, [[(1 * H, 5 * H)]] * 7)
ALWAYS = Calendar("24x7", "UTC", [[(0, 24 * H)]] * 7)
# Round the clock in a DST zone, with a holiday long gone so the fast path is not taken.
ALWAYS_BERLIN = Calendar("always_berlin", BERLIN, [[(0, 24 * H)]] * 7, [date(1990, 1, 1)])


def at(tz: ZoneInfo, *args: int) -> datetime:
    return datetime(*args, tzinfo=tz)  # type: ignore[misc]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def biz(start: datetime, hours: float, cal: Calendar = DE) -> datetime:
    return deadline(start, hours, "business_hours", cal)


# ----------------------------------------------------------------------------- examples


@pytest.mark.parametrize(
    ("start", "hours", "due"),
    [
        pytest.param(at(BERLIN, 2026, 11, 23, 10), 4, at(BERLIN, 2026, 11, 23, 14), id="inside-hours"),
        pytest.param(at(BERLIN, 2026, 11, 23, 6), 2, at(BERLIN, 2026, 11, 23, 10), id="before-opening"),
        pytest.param(at(BERLIN, 2026, 11, 23, 19), 2, at(BERLIN, 2026, 11, 24, 10), id="after-closing"),
        pytest.param(at(BERLIN, 2026, 11, 23, 16), 2, at(BERLIN, 2026, 11, 23, 18), id="ends-at-closing"),
        pytest.param(at(BERLIN, 2026, 11, 27, 17), 3, at(BERLIN, 2026, 11, 30, 10), id="over-weekend"),
        pytest.param(at(BERLIN, 2026, 11, 28, 12), 1, at(BERLIN, 2026, 11, 30, 9), id="start-on-saturday"),
        pytest.param(at(BERLIN, 2026, 11, 23, 8), 24, at(BERLIN, 2026, 11, 25, 12), id="24h-is-2.4-days"),
        pytest.param(at(BERLIN, 2026, 12, 24, 17), 2, at(BERLIN, 2026, 12, 28, 9), id="christmas-holidays"),
        pytest.param(at(BERLIN, 2026, 12, 31, 17), 2, at(BERLIN, 2027, 1, 4, 9), id="new-year"),
        pytest.param(at(BERLIN, 2026, 11, 23, 9, 15), 0.5, at(BERLIN, 2026, 11, 23, 9, 45), id="fraction"),
    ],
)
def test_business_hours_examples(start: datetime, hours: float, due: datetime) -> None:
    assert biz(start, hours) == due


def test_result_is_utc_whatever_the_input_offset() -> None:
    start = datetime(2026, 11, 23, 14, 0, tzinfo=ZoneInfo("Asia/Kolkata"))  # 09:30 Berlin
    due = biz(start, 1)
    assert due.tzinfo is UTC
    assert due == at(BERLIN, 2026, 11, 23, 10, 30)


def test_multi_interval_day_skips_lunch() -> None:
    assert biz(at(NEW_YORK, 2026, 11, 23, 11), 2, NY_LUNCH) == at(NEW_YORK, 2026, 11, 23, 14)
    # Starting during lunch counts from 13:00.
    assert biz(at(NEW_YORK, 2026, 11, 23, 12, 30), 1, NY_LUNCH) == at(NEW_YORK, 2026, 11, 23, 14)
    # A full day is 7 hours: 7 h from opening ends at closing, 7.5 h spills into the next day.
    assert biz(at(NEW_YORK, 2026, 11, 23, 9), 7, NY_LUNCH) == at(NEW_YORK, 2026, 11, 23, 17)
    assert biz(at(NEW_YORK, 2026, 11, 23, 9), 7.5, NY_LUNCH) == at(NEW_YORK, 2026, 11, 24, 9, 30)


# ------------------------------------------------------------------------------------- DST


def test_berlin_spring_forward_over_weekend() -> None:
    # Fri 27 Mar 2026 17:00 CET; clocks jump on Sun 29 Mar; Monday 09:00 is CEST (UTC+2).
    due = biz(at(BERLIN, 2026, 3, 27, 17), 2)
    assert due == utc(2026, 3, 30, 7)


def test_berlin_fall_back_over_weekend() -> None:
    # Fri 23 Oct 2026 17:00 CEST; clocks go back on Sun 25 Oct; Monday 09:00 is CET (UTC+1).
    assert biz(at(BERLIN, 2026, 10, 23, 17), 2) == utc(2026, 10, 26, 8)


@pytest.mark.parametrize("switch_day", [date(2026, 3, 29), date(2026, 10, 25)])
def test_office_day_on_a_switch_day_is_ten_real_hours(switch_day: date) -> None:
    every_day = Calendar("every_day", BERLIN, [[(8 * H, 18 * H)]] * 7)
    opening = at(BERLIN, switch_day.year, switch_day.month, switch_day.day, 8)
    assert biz(opening, 10, every_day) == at(BERLIN, switch_day.year, switch_day.month, switch_day.day, 18)
    assert biz(opening, 10, every_day) - opening == timedelta(hours=10)


def test_spring_forward_night_is_one_hour_shorter() -> None:
    # 01:00-05:00 local on 29 Mar 2026 is only 3 real hours (02:00-03:00 does not exist).
    start = at(BERLIN, 2026, 3, 29, 1)
    assert start == utc(2026, 3, 29, 0)
    assert biz(start, 3, NIGHT) == utc(2026, 3, 29, 3)  # 05:00 CEST
    assert biz(start, 4, NIGHT) == at(BERLIN, 2026, 3, 30, 2)  # next night, 1 h in


def test_fall_back_night_is_one_hour_longer() -> None:
    # 01:00 CEST to 05:00 CET on 25 Oct 2026 is 5 real hours (02:00-03:00 happens twice).
    start = at(BERLIN, 2026, 10, 25, 1)
    assert start == utc(2026, 10, 24, 23)
    assert biz(start, 5, NIGHT) == utc(2026, 10, 25, 4)
    assert biz(start, 5.5, NIGHT) == at(BERLIN, 2026, 10, 26, 1, 30)


def test_hours_inside_the_spring_gap_count_from_the_jump() -> None:
    # 29 Mar 2026 the clock jumps from 02:00 CET to 03:00 CEST (01:00 UTC). An office opening
    # at 02:30 opens at the jump; one closing at 02:30 closes at the jump.
    late_opener = Calendar("late", BERLIN, [[(150, 4 * H)]] * 7)  # 02:30-04:00
    [(opens, closes)] = late_opener.open_intervals(date(2026, 3, 29))
    assert (opens, closes) == (_us(utc(2026, 3, 29, 1)), _us(utc(2026, 3, 29, 2)))
    early_closer = Calendar("early", BERLIN, [[(0, 150)]] * 7)  # 00:00-02:30
    [(opens, closes)] = early_closer.open_intervals(date(2026, 3, 29))
    assert (opens, closes) == (_us(utc(2026, 3, 28, 23)), _us(utc(2026, 3, 29, 1)))
    assert biz(at(BERLIN, 2026, 3, 29, 0), 2, early_closer) == utc(2026, 3, 29, 1)


def _us(t: datetime) -> int:
    return (t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


@pytest.mark.parametrize(
    ("start", "due"),
    [
        # EST -> EDT on Sun 8 Mar 2026: Monday 10:00 EDT is 14:00 UTC.
        (at(NEW_YORK, 2026, 3, 6, 16), utc(2026, 3, 9, 14)),
        # EDT -> EST on Sun 1 Nov 2026: Monday 10:00 EST is 15:00 UTC.
        (at(NEW_YORK, 2026, 10, 30, 16), utc(2026, 11, 2, 15)),
    ],
)
def test_new_york_dst(start: datetime, due: datetime) -> None:
    assert biz(start, 2, NY_LUNCH) == due


def test_24x7_in_a_dst_zone_equals_calendar_hours() -> None:
    for start in (at(BERLIN, 2026, 3, 28, 22), at(BERLIN, 2026, 10, 24, 22)):
        for hours in (1, 5, 23, 24, 25, 49.5):
            # Real elapsed time: aware datetime + timedelta in one zone would be wall-clock time.
            expected = start.astimezone(UTC) + timedelta(hours=hours)
            assert biz(start, hours, ALWAYS_BERLIN) == expected
            assert biz(start, hours, ALWAYS) == expected


# --------------------------------------------------------------------------- edge cases


def test_calendar_clock_ignores_the_calendar() -> None:
    start = at(BERLIN, 2026, 11, 28, 12)  # Saturday
    assert deadline(start, 2, "calendar", DE) == start.astimezone(UTC) + timedelta(hours=2)


def test_zero_hours_is_due_at_start() -> None:
    start = at(BERLIN, 2026, 11, 28, 12)
    assert biz(start, 0) == start


@pytest.mark.parametrize("hours", [-1.0, float("nan"), float("inf")])
def test_bad_hours_rejected(hours: float) -> None:
    with pytest.raises(ValueError, match="hours"):
        biz(utc(2026, 11, 23, 9), hours)


def test_naive_start_rejected() -> None:
    with pytest.raises(ValueError, match="aware"):
        biz(datetime(2026, 11, 23, 9), 1)


def test_calendar_without_open_hours_rejected() -> None:
    with pytest.raises(ValueError, match="no open hours"):
        Calendar("closed", "UTC", [[]] * 7)


def test_overlapping_intervals_rejected() -> None:
    with pytest.raises(ValueError, match="overlaps"):
        Calendar("bad", "UTC", [[(8 * H, 13 * H), (12 * H, 18 * H)]] + [[]] * 6)


def test_adjacent_intervals_merge() -> None:
    cal = Calendar("split", "UTC", [[(8 * H, 12 * H), (12 * H, 18 * H)]] * 7)
    [(opens, closes)] = cal.open_intervals(date(2026, 11, 23))
    assert (closes - opens) == 10 * 3_600_000_000
    # One interval means a deadline can run through noon without a seam.
    assert biz(utc(2026, 11, 23, 11), 2, cal) == utc(2026, 11, 23, 13)


def test_unreachable_target_terminates() -> None:
    # A single open minute a week and a target of a year: gives up instead of looping forever.
    tiny = Calendar("tiny", "UTC", [[(0, 1)]] + [[]] * 6)
    with pytest.raises(ValueError, match="not reachable"):
        biz(utc(2026, 1, 1), 8760, tiny)


# ----------------------------------------------------------------------------- properties

# Every day has edges inside 02:00-03:00, the hour that does not exist on 29 Mar 2026.
GAPPY = Calendar("gappy", BERLIN, [[(1 * H, 150), (170, 4 * H), (23 * H, 24 * H)]] * 7)
CALENDARS = st.sampled_from([DE, NY_LUNCH, NIGHT, ALWAYS, ALWAYS_BERLIN, GAPPY])
DST_SWITCHES = [utc(2026, 3, 29, 1), utc(2026, 10, 25, 1), utc(2026, 3, 8, 7), utc(2026, 11, 1, 6)]
STARTS = st.one_of(
    st.datetimes(
        min_value=datetime(2025, 1, 1),
        max_value=datetime(2028, 12, 31),
        timezones=st.sampled_from([UTC, BERLIN, NEW_YORK]),
        allow_imaginary=False,
    ),
    # Uniform starts seldom land near a DST switch, so aim at the switches on purpose.
    st.builds(
        lambda switch, minutes: switch + timedelta(minutes=minutes),
        st.sampled_from(DST_SWITCHES),
        st.integers(min_value=-3 * 24 * 60, max_value=3 * 24 * 60),
    ),
)
# Whole minutes keep float hours exact enough to compare deadlines for equality.
HOURS = st.integers(min_value=0, max_value=200 * 60).map(lambda m: m / 60)


@settings(max_examples=300)
@given(start=STARTS, hours=HOURS, cal=CALENDARS)
def test_business_deadline_is_after_calendar_deadline(start: datetime, hours: float, cal: Calendar) -> None:
    due = biz(start, hours, cal)
    assert due >= start
    assert due >= deadline(start, hours, "calendar", cal)
    assert due.tzinfo is UTC


@settings(max_examples=300)
@given(a=STARTS, b=STARTS, hours=HOURS, cal=CALENDARS)
def test_monotone_in_start(a: datetime, b: datetime, hours: float, cal: Calendar) -> None:
    early, late = sorted((a, b))
    assert biz(early, hours, cal) <= biz(late, hours, cal)


@settings(max_examples=300)
@given(start=STARTS, a=HOURS, b=HOURS, cal=CALENDARS)
def test_hours_are_additive(start: datetime, a: float, b: float, cal: Calendar) -> None:
    assert biz(biz(start, a, cal), b, cal) == biz(start, a + b, cal)


@settings(max_examples=200)
@given(start=STARTS, hours=HOURS)
def test_round_the_clock_business_hours_are_calendar_hours(start: datetime, hours: float) -> None:
    expected = deadline(start, hours, "calendar", ALWAYS)
    assert biz(start, hours, ALWAYS_BERLIN) == expected
    assert biz(start, hours, ALWAYS) == expected
