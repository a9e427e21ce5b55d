"""Server-side SVG charts: numbers written out, labels escaped, bars proportional."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from router.console import charts


def _svg(markup: str) -> ET.Element:
    return ET.fromstring(markup)  # well-formed XML, or this raises


def _widths(markup: str, cls: str) -> list[float]:
    return [float(w) for w in re.findall(rf'class="{cls}"[^>]*width="([\d.]+)"', markup)]


def test_tier_mix_draws_shares_with_targets_and_is_titled() -> None:
    rows = [("VIP", 10, 0.1), ("Premium", 20, 0.2), ("Standard", 60, 0.6), ("Basic", 10, 0.1)]
    svg = str(charts.tier_mix(rows, {"VIP": 0.1, "Premium": 0.2, "Standard": 0.6, "Basic": 0.1}, "Tier mix"))
    root = _svg(svg)
    assert root.get("role") == "img" and root.get("aria-label") == "Tier mix"
    assert svg.count('class="target"') == 4
    assert "60.0 % (60)" in svg
    (vip,) = _widths(svg, "bar tier-VIP")
    (standard,) = _widths(svg, "bar tier-Standard")
    assert abs(standard - 6 * vip) < 0.5  # drawn to a tenth of a unit


def test_labels_from_a_policy_file_are_escaped() -> None:
    evil = '<script>alert(1)</script>"'
    svg = str(charts.bars([(evil, 3)], "due per queue"))
    _svg(svg)
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    svg = str(charts.grouped_bars([evil], {evil: 1}, {evil: 2}, 'title with "quotes"'))
    _svg(svg)
    assert "<script>" not in svg


def test_histogram_marks_the_alert_bands_and_columns_write_values() -> None:
    bands = [(f"{b * 5}-{b * 5 + 5}", b) for b in range(20)]
    svg = str(charts.histogram(bands, "churn", alarm_from=14))
    _svg(svg)
    assert svg.count('class="bar alarm"') == 6 and svg.count('class="bar"') == 14
    days = str(charts.columns([("Mon", 0), ("Tue", 12)], "alerts"))
    _svg(days)
    assert ">12<" in days and ">0<" in days


def test_an_empty_chart_says_so() -> None:
    assert ">none<" in str(charts.bars([], "nothing due"))
