"""Small charts as inline SVG, rendered on the server: no chart library, no script.

Every chart is an ``<svg role="img">`` with a title that says what it shows and text labels
carrying the numbers, so a screen reader and a narrow screen get the figures too. Colours
come from the stylesheet (classes such as ``bar tier-VIP``); the palette and its contrast
ratios live in ``static/console.css`` (checked by a unit test). Every label is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup

__all__ = ["bars", "columns", "grouped_bars", "histogram", "tier_mix"]

_W = 400
"""Width of the viewBox; charts scale to their container (``width: 100%``)."""


def _svg(height: int, title: str, body: list[str]) -> Markup:
    t = escape(title)
    return Markup(
        f'<svg class="chart" viewBox="0 0 {_W} {height}" role="img" aria-label="{t}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{t}</title>{"".join(body)}</svg>'
    )


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 10 or value == int(value) else f"{value:,.1f}"


def tier_mix(rows: Sequence[tuple[str, int, float]], targets: dict[str, float], title: str) -> Markup:
    """Horizontal bar per tier (share of customers) with a tick at the tier's target share."""
    row_h, left, right = 34, 78, 96
    width = _W - left - right
    scale = max([share for _, _, share in rows] + list(targets.values()) + [0.01])
    body: list[str] = []
    for i, (tier, count, share) in enumerate(rows):
        y = 8 + i * row_h
        w = width * share / scale
        cls = escape(tier)
        body.append(f'<text class="lbl" x="{left - 8}" y="{y + 17}" text-anchor="end">{cls}</text>')
        body.append(f'<rect class="bar tier-{cls}" x="{left}" y="{y + 4}" width="{w:.1f}" height="18" rx="2"/>')
        target = targets.get(tier)
        if target is not None:
            x = left + width * target / scale
            body.append(f'<line class="target" x1="{x:.1f}" x2="{x:.1f}" y1="{y}" y2="{y + 26}"/>')
        note = f"{share * 100:.1f} % ({count:,})"
        body.append(f'<text class="val" x="{left + width + 6}" y="{y + 17}">{escape(note)}</text>')
    return _svg(16 + row_h * len(rows), title, body)


def histogram(rows: Sequence[tuple[str, int]], title: str, *, alarm_from: int | None = None) -> Markup:
    """Vertical bars (e.g. 20 churn-risk bands); bands from index ``alarm_from`` in the alarm colour."""
    top, bottom, left = 18, 30, 8
    height = 170
    plot_h = height - top - bottom
    n = max(1, len(rows))
    step = (_W - 2 * left) / n
    peak = max([c for _, c in rows] + [1])
    body: list[str] = [f'<line class="axis" x1="{left}" x2="{_W - left}" y1="{top + plot_h}" y2="{top + plot_h}"/>']
    for i, (label, count) in enumerate(rows):
        h = plot_h * count / peak
        x = left + i * step
        cls = "bar alarm" if alarm_from is not None and i >= alarm_from else "bar"
        body.append(
            f'<rect class="{cls}" x="{x + 1:.1f}" y="{top + plot_h - h:.1f}" width="{step - 2:.1f}" '
            f'height="{h:.1f}"><title>{escape(label)}: {count:,}</title></rect>'
        )
        if i % max(1, n // 5) == 0:
            body.append(f'<text class="tick" x="{x:.1f}" y="{height - 12}">{escape(label.split("-")[0])}</text>')
    body.append(f'<text class="tick" x="{_W - left}" y="{height - 12}" text-anchor="end">100</text>')
    body.append(f'<text class="val" x="{_W - left}" y="{top - 4}" text-anchor="end">peak {peak:,}</text>')
    return _svg(height, title, body)


def columns(rows: Sequence[tuple[str, float]], title: str) -> Markup:
    """One column per label (e.g. a day), the value written above it."""
    top, bottom, left = 22, 28, 8
    height = 150
    plot_h = height - top - bottom
    n = max(1, len(rows))
    step = (_W - 2 * left) / n
    peak = max([v for _, v in rows] + [1])
    body: list[str] = [f'<line class="axis" x1="{left}" x2="{_W - left}" y1="{top + plot_h}" y2="{top + plot_h}"/>']
    for i, (label, value) in enumerate(rows):
        h = plot_h * value / peak
        x = left + i * step
        cx = x + step / 2
        body.append(
            f'<rect class="bar alarm" x="{x + step * 0.2:.1f}" y="{top + plot_h - h:.1f}" '
            f'width="{step * 0.6:.1f}" height="{h:.1f}"/>'
        )
        body.append(
            f'<text class="val" x="{cx:.1f}" y="{top + plot_h - h - 5:.1f}" text-anchor="middle">{_fmt(value)}</text>'
        )
        body.append(f'<text class="tick" x="{cx:.1f}" y="{height - 10}" text-anchor="middle">{escape(label)}</text>')
    return _svg(height, title, body)


def bars(rows: Sequence[tuple[str, float]], title: str, *, unit: str = "") -> Markup:
    """Horizontal bars with their labels (e.g. deadlines per queue); an empty list says so."""
    row_h, left, right = 28, 120, 60
    width = _W - left - right
    if not rows:
        return _svg(40, title, ['<text class="lbl" x="8" y="24">none</text>'])
    peak = max([v for _, v in rows] + [1])
    body: list[str] = []
    for i, (label, value) in enumerate(rows):
        y = 6 + i * row_h
        w = width * value / peak
        body.append(f'<text class="lbl" x="{left - 8}" y="{y + 15}" text-anchor="end">{escape(label[:18])}</text>')
        body.append(f'<rect class="bar" x="{left}" y="{y + 3}" width="{w:.1f}" height="16" rx="2"/>')
        body.append(f'<text class="val" x="{left + w + 6:.1f}" y="{y + 15}">{_fmt(value)}{escape(unit)}</text>')
    return _svg(12 + row_h * len(rows), title, body)


def grouped_bars(order: Sequence[str], before: dict[str, int], after: dict[str, int], title: str) -> Markup:
    """Two bars per category: before (muted) and after (the category's colour), counts written out."""
    row_h, left, right = 46, 78, 84
    width = _W - left - right
    peak = max(list(before.values()) + list(after.values()) + [1])
    body: list[str] = []
    for i, name in enumerate(order):
        y = 6 + i * row_h
        b, a = before.get(name, 0), after.get(name, 0)
        cls = escape(name)
        body.append(f'<text class="lbl" x="{left - 8}" y="{y + 24}" text-anchor="end">{cls}</text>')
        body.append(f'<rect class="bar before" x="{left}" y="{y + 4}" width="{width * b / peak:.1f}" height="15"/>')
        body.append(
            f'<rect class="bar tier-{cls}" x="{left}" y="{y + 22}" width="{width * a / peak:.1f}" height="15"/>'
        )
        body.append(f'<text class="val" x="{left + width + 6}" y="{y + 16}">before {b:,}</text>')
        body.append(f'<text class="val" x="{left + width + 6}" y="{y + 34}">after {a:,}</text>')
    return _svg(12 + row_h * len(order), title, body)
