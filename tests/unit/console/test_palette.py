"""The console's colours are readable: WCAG contrast of the palette in static/console.css."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

CSS = (Path(__file__).resolve().parents[3] / "router" / "console" / "static" / "console.css").read_text()
PALETTE = dict(re.findall(r"--([\w-]+):\s*(#[0-9a-fA-F]{6})\s*;", CSS))

# (foreground, background) pairs the stylesheet puts text on
TEXT = [
    ("fg", "bg"), ("fg", "panel"), ("muted", "bg"), ("muted", "panel"), ("accent", "bg"), ("accent", "panel"),
    ("on-accent", "accent"), ("on-accent", "danger"), ("danger", "bg"), ("ok", "bg"), ("ok", "panel"),
    ("warn-fg", "warn-bg"), ("warn-fg", "bg"), ("warn-fg", "panel"),
    *(("on-accent", f"tier-{t}") for t in ("VIP", "Premium", "Standard", "Basic")),
]  # fmt: skip
# chart marks and borders of inputs: graphical objects, WCAG 1.4.11 asks 3:1 against their background
GRAPHICS = [
    (c, bg)
    for c in ("bar", "before", "alarm", "tier-VIP", "tier-Premium", "tier-Standard", "tier-Basic", "muted", "fg")
    for bg in ("bg", "panel")
]


def luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    la, lb = sorted((luminance(a), luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def test_the_formula_matches_wcag_reference_values() -> None:
    assert contrast("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)


@pytest.mark.parametrize(("fg", "bg"), TEXT, ids=[f"{f}-on-{b}" for f, b in TEXT])
def test_text_colours_reach_4_5_to_1(fg: str, bg: str) -> None:
    assert contrast(PALETTE[fg], PALETTE[bg]) >= 4.5


@pytest.mark.parametrize(("fg", "bg"), GRAPHICS, ids=[f"{f}-on-{b}" for f, b in GRAPHICS])
def test_chart_colours_reach_3_to_1(fg: str, bg: str) -> None:
    assert contrast(PALETTE[fg], PALETTE[bg]) >= 3.0


def test_every_colour_the_stylesheet_uses_is_a_palette_variable() -> None:
    body = CSS.split("}", 1)[1]  # everything after :root
    stray = re.findall(r"#[0-9a-fA-F]{3,6}\b", body)
    assert stray == [], f"colours outside the checked palette: {stray}"
