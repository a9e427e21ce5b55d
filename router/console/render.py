"""Pages from Jinja templates (autoescaped), with the headers every console page carries."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from litestar import MediaType, Response

from router.console import charts

__all__ = ["PAGE_HEADERS", "fragment", "page"]

PAGE_HEADERS = {
    # Scripts and styles only from /console/static; forms only to this site; never framed.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",  # no-referrer would make browsers send Origin: null on our own forms
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


def _when(value: float | datetime | None) -> str:
    if value is None:
        return "-"
    at = value if isinstance(value, datetime) else datetime.fromtimestamp(value, UTC)
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _money(value: float) -> str:
    return f"{value:,.0f}"


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f} %"


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"


@functools.cache
def _env() -> Environment:
    env = Environment(
        loader=PackageLoader("router.console", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=_when, money=_money, pct=_pct, num=_num)
    env.globals["charts"] = charts
    return env


def page(template: str, status: int = 200, **context: Any) -> Response[str]:
    """A whole page."""
    html = _env().get_template(template).render(**context)
    return Response(html, status_code=status, media_type=MediaType.HTML, headers=PAGE_HEADERS)


def fragment(template: str, **context: Any) -> Response[str]:
    """Part of a page, for the few lines of script that refresh a progress panel."""
    return page(template, **context)
