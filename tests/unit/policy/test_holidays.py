"""Public holidays come from the policy's country and subdivision, for any year, and their end is reported."""

from __future__ import annotations

import tomllib
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from prometheus_client import REGISTRY

from router.policy import deadline, load_policy, parse_policy
from router.policy.engine import Policy
from router.serving.live import report_calendars
from router.settings import PolicySettings

DEFAULT = Path(PolicySettings().path)
BERLIN = ZoneInfo("Europe/Berlin")


def test_german_holidays_in_berlin_2031_are_known_without_editing_the_file() -> None:
    office = load_policy(DEFAULT).calendars["de_office"]
    year_2031 = (date(2031, 1, 1) + timedelta(days=n) for n in range(365))
    holidays_2031 = {day for day in year_2031 if office.is_holiday(day)}
    assert holidays_2031 == {
        date(2031, 1, 1),  # Neujahr
        date(2031, 3, 8),  # Internationaler Frauentag (Berlin only)
        date(2031, 4, 11),  # Karfreitag
        date(2031, 4, 14),  # Ostermontag
        date(2031, 5, 1),
        date(2031, 5, 22),  # Christi Himmelfahrt
        date(2031, 6, 2),  # Pfingstmontag
        date(2031, 10, 3),
        date(2031, 12, 25),
        date(2031, 12, 26),
    }
    # Thursday before Easter, 17:00: one hour that day, then Good Friday, the weekend and Easter Monday
    due = deadline(datetime(2031, 4, 10, 17, tzinfo=BERLIN), 2, "business_hours", office)
    assert due == datetime(2031, 4, 15, 9, tzinfo=BERLIN)


def test_a_deadline_decades_ahead_skips_that_years_holidays() -> None:
    office = load_policy(DEFAULT).calendars["de_office"]
    # Christmas 2062 falls on Monday and Tuesday: Friday 17:00 + 2 business hours is Wednesday 09:00
    due = deadline(datetime(2062, 12, 22, 17, tzinfo=BERLIN), 2, "business_hours", office)
    assert due == datetime(2062, 12, 27, 9, tzinfo=BERLIN)


def _with_calendar(**calendar: object) -> Policy:
    """The default policy with de_office changed as given (None removes a key)."""
    raw = tomllib.loads(DEFAULT.read_text())
    office = raw["calendars"]["de_office"]
    for key, value in calendar.items():
        if value is None:
            office.pop(key, None)
        else:
            office[key] = value
    return Policy(parse_policy(raw))


def test_the_subdivision_decides_regional_holidays() -> None:
    berlin = load_policy(DEFAULT).calendars["de_office"]
    brandenburg = _with_calendar(subdivision="BB").calendars["de_office"]
    # Reformationstag is a holiday in Brandenburg, not in Berlin; Frauentag the other way round
    assert brandenburg.is_holiday(date(2047, 10, 31)) and not berlin.is_holiday(date(2047, 10, 31))
    assert berlin.is_holiday(date(2047, 3, 8)) and not brandenburg.is_holiday(date(2047, 3, 8))


def test_listed_closures_add_to_the_public_holidays() -> None:
    closures = _with_calendar(holidays=[date(2030, 12, 24), date(2030, 12, 31)]).calendars["de_office"]
    assert closures.is_holiday(date(2030, 12, 24)) and closures.is_holiday(date(2030, 12, 25))
    assert not load_policy(DEFAULT).calendars["de_office"].is_holiday(date(2030, 12, 24))


def _last_holiday(calendar: str) -> float | None:
    return REGISTRY.get_sample_value("router_policy_calendar_last_holiday_timestamp_seconds", {"calendar": calendar})


def test_the_last_known_holiday_is_reported_per_calendar() -> None:
    today = date(2027, 10, 1)
    raw = tomllib.loads(DEFAULT.read_text())
    office = raw["calendars"]["de_office"]
    raw["calendars"]["listed_office"] = {**office, "holidays": [date(2027, 5, 1), date(2027, 12, 26)]}
    del raw["calendars"]["listed_office"]["country"], raw["calendars"]["listed_office"]["subdivision"]
    raw["calendars"]["nothing_office"] = {"timezone": "UTC", "hours": office["hours"]}
    report_calendars(Policy(parse_policy(raw)), today)
    # generated: the last holiday two years ahead; listed: the list's end, 86 days away (the alert's case)
    assert _last_holiday("de_office") == datetime(2029, 12, 26, tzinfo=UTC).timestamp()
    assert _last_holiday("listed_office") == datetime(2027, 12, 26, tzinfo=UTC).timestamp()
    assert _last_holiday("nothing_office") == 0.0  # closed hours but no holiday at all
    assert _last_holiday("24x7") is None  # open round the clock by design: nothing to report
    # a reload without the listed calendar drops its series
    report_calendars(load_policy(DEFAULT), today)
    assert _last_holiday("listed_office") is None and _last_holiday("de_office") is not None
