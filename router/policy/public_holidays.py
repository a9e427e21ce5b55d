"""Public holidays of a country (and subdivision), from the ``holidays`` package, per year.

A calendar in the policy names its ``country`` (ISO 3166-1 alpha-2) and optionally its
``subdivision`` (a state or region code of that country); the SLA clock then asks for the
holidays of each year it reaches, so no list runs out (``router.policy.sla.Calendar``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import date

import holidays

__all__ = ["country_problem", "holidays_of"]


@functools.cache
def _supported() -> dict[str, list[str]]:
    return {code: list(subdivisions) for code, subdivisions in holidays.list_supported_countries().items()}


def country_problem(country: str, subdivision: str | None) -> tuple[str, str] | None:
    """``(field, problem)`` when the holidays package cannot generate this calendar's holidays, else None."""
    known = _supported()
    if country not in known:
        return "country", (
            f"unknown country {country!r}: give an ISO 3166-1 alpha-2 code the holidays package knows "
            "(e.g. 'DE', 'AT', 'US')"
        )
    if subdivision is not None and subdivision not in known[country]:
        listed = ", ".join(known[country]) or "none"
        return "subdivision", f"{subdivision!r} is not a subdivision of {country} (known: {listed})"
    return None


def holidays_of(country: str, subdivision: str | None) -> Callable[[int], frozenset[date]]:
    """A function from a year to the public holidays of ``country``/``subdivision`` in it."""

    def year(y: int) -> frozenset[date]:
        return frozenset(holidays.country_holidays(country, subdiv=subdivision, years=y).keys())

    return year
