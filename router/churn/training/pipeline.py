"""One training run end to end: replay -> rows -> CV + fit -> ONNX + card + report."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from router.churn.training.dataset import Dataset, LabelKind, build_dataset, read_events
from router.churn.training.train import build_card, export_onnx, latency_us, metrics, native_predict, train_model
from router.settings import Settings
from schemas.events import CustomerEvent

__all__ = ["TrainConfig", "run"]


@dataclass
class TrainConfig:
    """What one training run does; ``router train`` builds it from its arguments."""

    events: Path
    out: Path
    cutoffs: list[datetime]
    """Training cutoffs (stacked: one row per customer alive at each)."""
    holdout: datetime
    """Later cutoff whose rows are the time-based holdout; training labels end at or before it."""
    horizon_days: int = 90
    label: LabelKind = "cancel"
    activity: frozenset[str] | None = None
    """Event types counted as activity by the inactivity label (None: every kind)."""
    folds: int = 5
    seed: int = 7
    lateness_s: int = field(default_factory=lambda: Settings().stream.lateness_s)
    command: str = ""
    progress: bool = True
    report: bool = True
    latency_repeat: int = 3000
    tap: Callable[[Iterable[CustomerEvent]], Iterable[CustomerEvent]] | None = None
    """Wraps the event stream the rows are built from (``router retrain`` folds holdout snapshots on the way)."""
    on_rows: Callable[[Dataset, Dataset], None] | None = None
    """Called with the training and holdout rows once built (``router retrain`` scores the live model on them)."""


def run(cfg: TrainConfig) -> dict[str, Any]:
    """Train, export ``cfg.out`` (.onnx) with its card (.json) and report (.md); return the card."""
    from router.churn.model import ChurnModel

    began = time.monotonic()
    cutoffs = sorted(cfg.cutoffs)
    horizon = timedelta(days=cfg.horizon_days)
    if cutoffs[-1] + horizon > cfg.holdout:
        raise ValueError(
            f"training labels of cutoff {cutoffs[-1]:%Y-%m-%d} run to {cutoffs[-1] + horizon:%Y-%m-%d}, "
            f"after the holdout cutoff {cfg.holdout:%Y-%m-%d}: the holdout would not be out of time"
        )
    all_cuts = [*cutoffs, cfg.holdout]
    events: Iterable[CustomerEvent] = read_events(cfg.events)
    data = build_dataset(
        cfg.tap(events) if cfg.tap is not None else events,
        all_cuts,
        horizon_days=cfg.horizon_days,
        label=cfg.label,
        lateness_s=cfg.lateness_s,
        activity=cfg.activity,
        progress=cfg.progress,
    )
    train = data.select(range(len(cutoffs)))
    holdout = data.select([len(cutoffs)])
    if cfg.on_rows is not None:
        cfg.on_rows(train, holdout)
    if cfg.label == "inactivity" and not train.y.sum() and len(train.y):
        raise ValueError(
            "no customer goes without activity for a whole horizon in the training windows: with "
            "subscriptions, usage or payments in the log use --label cancel, or --activity order_placed "
            "for 'no order within the horizon'"
        )
    if train.y.sum() < 10 or holdout.y.sum() < 5:
        raise ValueError(
            f"too few positives to train ({int(train.y.sum())} training, {int(holdout.y.sum())} holdout); "
            "use more customers or a longer history"
        )
    _say(
        cfg,
        f"rows: {len(train.y):,} training ({int(train.y.sum()):,} positive) over {len(cutoffs)} cutoffs, "
        f"{len(holdout.y):,} holdout ({int(holdout.y.sum()):,} positive); skipped {data.skipped}",
    )

    trained = train_model(train, folds=cfg.folds, seed=cfg.seed, progress=cfg.progress)
    onnx_bytes = export_onnx(trained, cfg.out)
    X_hold = holdout.X.astype(np.float32)
    p_native = native_predict(trained, X_hold)
    hold_metrics = metrics(holdout.y, p_native, base_rate=float(train.y.mean()))

    version = cfg.out.stem
    card_path = cfg.out.with_suffix(".json")
    latency = {"onnx_predict_one_median": 0.0, "onnx_session_run_median": 0.0, "native_median": 0.0}

    def card_for(parity: float) -> dict[str, Any]:
        return build_card(
            version=version,
            onnx_bytes=onnx_bytes,
            trained=trained,
            train=train,
            holdout=holdout,
            label=cfg.label,
            activity=cfg.activity,
            horizon_days=cfg.horizon_days,
            events_path=str(cfg.events),
            holdout_metrics=hold_metrics,
            parity_max_abs=parity,
            latency=latency,
            command=cfg.command,
        )

    # The card must exist before the serving class can load the model it describes.
    card_path.write_text(json.dumps(card_for(-1.0), indent=2, allow_nan=False))
    model = ChurnModel.load(cfg.out)
    p_onnx = model.predict(X_hold)
    parity = float(np.max(np.abs(p_onnx - p_native))) if len(p_onnx) else 0.0
    rows = X_hold[: min(len(X_hold), 500)]
    sess, inp, outs = model._session, model._input, model._outputs
    booster = trained.booster
    latency["onnx_predict_one_median"] = latency_us(lambda r: model.predict_one(r.tolist()), rows, cfg.latency_repeat)
    latency["onnx_session_run_median"] = latency_us(
        lambda r: sess.run(outs, {inp: r.reshape(1, -1)}), rows, cfg.latency_repeat
    )
    latency["native_median"] = latency_us(
        lambda r: booster.predict(r.reshape(1, -1).astype(np.float64)), rows, min(cfg.latency_repeat, 500)
    )
    card = card_for(parity)
    card["training_seconds"] = round(time.monotonic() - began, 1)
    card_path.write_text(json.dumps(card, indent=2, allow_nan=False))
    if cfg.report:
        from router.churn.training.report import write_report

        write_report(card, cfg.out.with_suffix(".md"), holdout.y, p_onnx)
    _summary(cfg, card)
    return card


def _say(cfg: TrainConfig, text: str) -> None:
    if cfg.progress:
        print(text, file=sys.stderr, flush=True)


def _summary(cfg: TrainConfig, card: dict[str, Any]) -> None:
    h, cv, lat = card["metrics"]["holdout"], card["metrics"]["cv"], card["latency_us"]
    _say(
        cfg,
        "\n".join(
            [
                f"model {card['version']} -> {cfg.out} ({card['onnx']['bytes'] / 1024:.0f} KiB, "
                f"sha256 {card['onnx']['sha256'][:12]}..) in {card['training_seconds']}s",
                f"  holdout: ROC-AUC {h.get('roc_auc')}  PR-AUC {h.get('pr_auc')}  Brier {h.get('brier')} "
                f"(base rate {h.get('brier_base_rate')})  top-decile lift {h.get('top_decile_lift')} "
                f"capture {h.get('top_decile_capture')}",
                f"  CV:      ROC-AUC {cv.get('roc_auc')}  PR-AUC {cv.get('pr_auc')}  Brier {cv.get('brier')} "
                f"(base rate {cv.get('brier_base_rate')})",
                f"  parity ONNX vs native: {card['parity']['max_abs_diff_onnx_vs_native']:.2e}; latency "
                f"predict_one {lat['onnx_predict_one_median']} us, native {lat['native_median']} us",
            ]
        ),
    )


def stacked_cutoffs(last: datetime, stack: int, step_days: int) -> list[datetime]:
    """``stack`` cutoffs ``step_days`` apart, ending at ``last``."""
    return [last - timedelta(days=step_days * i) for i in reversed(range(stack))]


def parse_days(text: str) -> int:
    """``90d`` / ``12w`` / ``90`` -> days."""
    t = text.strip().lower()
    if t.endswith("w"):
        return int(t[:-1]) * 7
    return int(t[:-1]) if t.endswith("d") else int(t)
