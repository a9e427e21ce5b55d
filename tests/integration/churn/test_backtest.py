"""``router backtest`` end to end on a small synthetic orders log: served path, BG/NBD beside it, no peeking."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from router.churn.backtest import BacktestConfig, parse_date, run_backtest
from router.churn.training.dataset import read_events
from router.devstack.demo import write_jsonl
from schemas.events import CustomerEvent, OrderPlaced

START = datetime(2025, 1, 1, 12, tzinfo=UTC)


def _shop(n: int = 500, seed: int = 3) -> list[CustomerEvent]:
    """Buy-till-you-die customers: Poisson purchases, a drop-out chance after each, first order in the first quarter."""
    rng = np.random.default_rng(seed)
    end = START + timedelta(days=540)
    events: list[CustomerEvent] = []
    for c in range(n):
        rate = rng.gamma(0.6, 1 / 20.0)  # purchases a day
        drop = rng.beta(1.0, 3.0)
        t = START + timedelta(days=float(rng.uniform(0, 90)))
        k = 0
        while t < end:
            events.append(
                OrderPlaced(
                    event_id=f"s{c}-{k}",
                    customer_id=f"C{c:04d}",
                    occurred_at=t,
                    order_id=f"s{c}-{k}",
                    amount=round(float(rng.gamma(4.0, 8.0)), 2),
                )
            )
            k += 1
            if rng.random() < drop:
                break
            t += timedelta(days=float(rng.exponential(1 / rate)))
    events.sort(key=lambda e: e.occurred_at)
    return events


@pytest.fixture(scope="module")
def shop_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("backtest") / "shop.jsonl"
    write_jsonl(_shop(), path)
    return path


def test_backtest_command_reports_both_methods(
    shop_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from router.cli import main

    out = tmp_path / "report.md"
    argv = ["backtest", "--events", str(shop_log), "--at", "2025-09-30", "--until", "2026-06-30"]
    assert main([*argv, "--stack", "6", "--bootstrap", "100", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.read_text() == text
    assert "customers" in text and "active again" in text
    figures = {}
    for name in ("router", "BG/NBD + Gamma-Gamma"):
        row = re.search(rf"^\| {re.escape(name)} \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \|$", text, re.M)
        assert row, text
        figures[name] = [float(v) for v in row.groups()]
    # Both rank the customers who buy again far better than chance on a log drawn from BG/NBD's own story.
    for roc, pr, share, mean_p in figures.values():
        assert 0.65 < roc <= 1 and 0 < pr <= 1 and 0.1 < share <= 1 and 0 < mean_p < 1
    assert re.search(r"^\| roc_auc \| [+-][0-9.]+ \| \[[+-][0-9.]+, [+-][0-9.]+\] \| [0-9.]+ \|$", text, re.M)
    assert text.count("\n| 10 | ") == 1  # ten calibration groups


def test_the_router_model_sees_only_events_before_at(shop_log: Path) -> None:
    events = list(read_events(shop_log))
    at, until = parse_date("2025-09-30"), parse_date("2026-06-30")
    cfg = BacktestConfig(at=at, until=until, stack=3, step_days=14, bootstrap=0, progress=False)
    result = run_backtest(events, cfg)
    last_cutoff = max(datetime.fromisoformat(c) for c in result.notes["router_training"]["cutoffs"])
    assert last_cutoff + timedelta(days=cfg.horizon_days) <= at  # labels, too, end before `at`
    # Later orders change the grade, never the scores: drop every order after `at` and score again.
    before = run_backtest([e for e in events if e.occurred_at <= at] + _one_later_order(events, at), cfg)
    for mine, theirs in zip(result.methods, before.methods, strict=True):
        np.testing.assert_allclose(mine.p_active, theirs.p_active)
        np.testing.assert_allclose(mine.clv, theirs.clv)
    with pytest.raises(ValueError, match="--until must be after --at"):
        run_backtest(events, BacktestConfig(at=until, until=at, progress=False))


def _one_later_order(events: list[CustomerEvent], at: datetime) -> list[CustomerEvent]:
    """Keep one order after ``at`` per customer who has one, so 'active again' is unchanged and revenue is not."""
    seen: set[str] = set()
    out: list[CustomerEvent] = []
    for e in events:
        if e.occurred_at > at and e.customer_id not in seen:
            seen.add(e.customer_id)
            out.append(e)
    return out
