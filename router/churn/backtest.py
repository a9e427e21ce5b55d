"""``router backtest``: score every customer as of a date with the served code path, grade it later.

The log is split at ``--at``. A transactional churn model ("no order within the horizon") is
trained on the calibration events only (stacked cutoffs that all end, labels included, by
``--at``), exported to ONNX and loaded by the serving class. Every customer is then folded by
:func:`router.core.reducer.fold` from the calibration events, turned into features by
:func:`router.core.features.features` as of ``--at``, scored by the ONNX model and valued by
:func:`router.core.scoring.clv_parts`: what the service would have answered that day.

Graded on ``(at, until]``: ROC-AUC and PR-AUC for "active again" (any order), a calibration
table, and the share of later revenue the top decile by CLV brings. The same figures for the
literature's baseline, BG/NBD + Gamma-Gamma (:mod:`router.churn.btyd`) fitted on the same
calibration data, and paired bootstrap intervals of the differences.

``--cdnow`` reads the CDNOW sample the ``lifetimes`` wheel ships (``pip install router[backtest]``);
it is read from the installed package at run time, never copied into the repository.
"""

from __future__ import annotations

import importlib.metadata
import math
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from router.churn.btyd import fit_bgnbd, fit_gamma_gamma
from router.core.features import FEATURE_NAMES, features
from router.core.identity import IdentityHasher
from router.core.reducer import DAY, Snapshot, fold
from router.core.scoring import NO_SERVICE_COST, clv_parts
from router.settings import ModelSettings
from schemas.events import CustomerEvent, OrderPlaced

__all__ = [
    "MONOTONE",
    "BacktestConfig",
    "BacktestResult",
    "cdnow_events",
    "cdnow_path",
    "render",
    "run_backtest",
]

Array = npt.NDArray[np.float64]
_F = {name: i for i, name in enumerate(FEATURE_NAMES)}
_HASHER_KEY = b"backtest-only-key-0123456789abcd"
MONOTONE: dict[str, int] = {
    "orders_30d": -1,
    "orders_90d": -1,
    "orders_total": -1,
    "order_recency_days": -1,
    "days_since_last_order": 1,
    "expected_activity_ratio": 1,
}
"""Direction of the risk of not ordering again in each feature, the others held: more orders and a later
last order lower it, a longer silence (in days or in usual gaps) raises it."""
_WEEK = 7.0


def cdnow_path() -> Path:
    """The CDNOW sample inside the installed ``lifetimes`` wheel (not imported: only its file is read)."""
    try:
        dist = importlib.metadata.distribution("lifetimes")
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            "the CDNOW sample comes with the `lifetimes` wheel: pip install 'router[backtest]'"
        ) from None
    path = Path(str(dist.locate_file("lifetimes/datasets/CDNOW_sample.txt")))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed lifetimes package")
    return path


def cdnow_events(path: Path | None = None) -> list[CustomerEvent]:
    """The CDNOW sample (customer, id, yyyymmdd, items, amount) as ``order_placed`` events.

    Transactions of one customer on one day become one order (the literature counts purchase
    days), at noon UTC, amounts in USD.
    """
    per_day: dict[tuple[str, str], float] = defaultdict(float)
    with open(path or cdnow_path()) as fh:
        for line in fh:
            parts = line.split()
            if len(parts) != 5:
                continue
            per_day[(parts[0], parts[2])] += float(parts[4])
    events: list[CustomerEvent] = []
    for (cid, day), amount in sorted(per_day.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        at = datetime(int(day[:4]), int(day[4:6]), int(day[6:]), 12, tzinfo=UTC)
        events.append(
            OrderPlaced(
                event_id=f"cdnow-{cid}-{day}",
                customer_id=f"cdnow-{cid}",
                occurred_at=at,
                order_id=f"{cid}-{day}",
                amount=round(max(amount, 0.0), 2),
                currency="USD",
            )
        )
    return events


@dataclass
class BacktestConfig:
    """One backtest: the split, and how the router's transactional model is trained before ``at``."""

    at: datetime
    until: datetime
    horizon_days: int = 91
    """Label horizon of the router's model: "no order within this many days"."""
    stack: int = 14
    step_days: int = 7
    """Training cutoffs: ``stack`` of them ``step_days`` apart, the last ``horizon`` before the last calibration event."""
    leaves: int = 4
    min_leaf: int = 100
    trees: int = 200
    learning_rate: float = 0.03
    """LightGBM capacity: a few thousand customers call for smaller trees than the service's default model."""
    monotone: bool = True
    """Constrain the trees by :data:`MONOTONE` (what is known about lapsing before any data is seen)."""
    seed: int = 7
    bootstrap: int = 1000
    lateness_s: int = 7 * DAY
    progress: bool = True
    command: str = ""


@dataclass
class MethodScores:
    """One method's answers for every customer, in the same order as :attr:`BacktestResult.customers`."""

    name: str
    p_active: Array
    """Probability of any order in ``(at, until]``."""
    clv: Array


@dataclass
class BacktestResult:
    config: BacktestConfig
    customers: list[str]
    active: npt.NDArray[np.int8]
    revenue: Array
    methods: list[MethodScores]
    figures: dict[str, dict[str, float]]
    calibration: dict[str, list[dict[str, float]]]
    differences: dict[str, dict[str, float]]
    notes: dict[str, Any] = field(default_factory=dict)


def _ts(d: datetime) -> int:
    return int(d.timestamp())


def _progress(items: Iterable[Any], enabled: bool, desc: str, total: int | None = None) -> Iterable[Any]:
    if not enabled:
        return items
    from tqdm import tqdm

    bar: Iterable[Any] = tqdm(items, desc=desc, total=total, unit=" customers", mininterval=0.5, file=sys.stderr)
    return bar


def _train_router(events: Sequence[CustomerEvent], cfg: BacktestConfig, out: Path) -> tuple[Any, dict[str, Any]]:
    """Train the transactional model on events up to ``at`` only; return the loaded ChurnModel and its card."""
    import json

    from router.churn.model import ChurnModel
    from router.churn.training.dataset import build_dataset
    from router.churn.training.train import build_card, export_onnx, metrics, train_model

    calibration = [e for e in events if e.occurred_at <= cfg.at]
    if not calibration:
        raise ValueError(f"no events at or before {cfg.at:%Y-%m-%d}")
    # Every label window ends by the last calibration event: nothing after `at` is ever seen.
    last = max(e.occurred_at for e in calibration) - timedelta(days=cfg.horizon_days)
    cutoffs = [last - timedelta(days=cfg.step_days * i) for i in reversed(range(cfg.stack))]
    data = build_dataset(
        calibration,
        cutoffs,
        horizon_days=cfg.horizon_days,
        label="inactivity",
        activity=frozenset({"order_placed"}),
        lateness_s=cfg.lateness_s,
        progress=cfg.progress,
    )
    if data.y.sum() < 10 or data.y.sum() == len(data.y):
        raise ValueError(
            f"too few training labels of each kind before {cfg.at:%Y-%m-%d} ({int(data.y.sum())} of {len(data.y)})"
        )
    params: dict[str, Any] = {
        "num_leaves": cfg.leaves,
        "min_data_in_leaf": cfg.min_leaf,
        "learning_rate": cfg.learning_rate,
    }
    if cfg.monotone:
        params["monotone_constraints"] = [MONOTONE.get(name, 0) for name in FEATURE_NAMES]
    trained = train_model(data, folds=5, seed=cfg.seed, progress=cfg.progress, params=params, trees=cfg.trees)
    onnx_bytes = export_onnx(trained, out)
    card = build_card(
        version=out.stem,
        onnx_bytes=onnx_bytes,
        trained=trained,
        train=data,
        holdout=data.select([]),
        label="inactivity",
        activity=frozenset({"order_placed"}),
        horizon_days=cfg.horizon_days,
        events_path="(calibration events of the backtest)",
        holdout_metrics=metrics(data.y[:0], np.zeros(0), base_rate=float(data.y.mean())),
        parity_max_abs=-1.0,
        latency={},
        command=cfg.command,
    )
    out.with_suffix(".json").write_text(json.dumps(card, indent=2, allow_nan=False))
    return ChurnModel.load(out, business="transactional"), card


def run_backtest(events: Sequence[CustomerEvent], cfg: BacktestConfig) -> BacktestResult:
    """Train before ``at``, score everyone as of ``at`` (router and BG/NBD), grade on ``(at, until]``."""
    at, until = _ts(cfg.at), _ts(cfg.until)
    if until <= at:
        raise ValueError("--until must be after --at")
    hasher = IdentityHasher(_HASHER_KEY)
    per_customer: dict[str, list[CustomerEvent]] = defaultdict(list)
    for e in events:
        per_customer[e.customer_id].append(e)
    # Outcome: any order in (at, until], and its revenue.
    snaps: dict[str, Snapshot] = {}
    later_rev: dict[str, float] = defaultdict(float)
    later_any: dict[str, bool] = defaultdict(bool)
    for cid, evs in _progress(per_customer.items(), cfg.progress, "folding", len(per_customer)):
        snap: Snapshot | None = None
        for e in sorted(evs, key=lambda ev: ev.occurred_at):
            t = _ts(e.occurred_at)
            if t <= at:
                snap, _ = fold(snap, e, lateness_s=cfg.lateness_s, hasher=hasher)
            elif t <= until and isinstance(e, OrderPlaced):
                later_any[cid] = True
                later_rev[cid] += e.amount
        if snap is not None and snap.orders_total > 0:
            snaps[cid] = snap  # the population: every customer with an order by `at`, dormant ones included
    customers = sorted(snaps)
    if len(customers) < 20:
        raise ValueError(f"only {len(customers)} customers ordered by {cfg.at:%Y-%m-%d}")
    active = np.asarray([later_any[c] for c in customers], dtype=np.int8)
    revenue = np.asarray([later_rev[c] for c in customers], dtype=np.float64)
    if active.sum() in (0, len(active)):
        raise ValueError("every customer (or none) is active again: nothing to rank")
    rows = np.asarray([features(snaps[c], at) for c in customers], dtype=np.float64)
    weeks = (until - at) / DAY / _WEEK

    with tempfile.TemporaryDirectory() as tmp:
        model, card = _train_router(events, cfg, Path(tmp) / "backtest-router.onnx")
        churn = model.predict(rows.astype(np.float32))
    settings = ModelSettings(horizon_days=cfg.horizon_days)
    clv = np.asarray(
        [
            clv_parts(snaps[c], row.tolist(), float(p), settings, NO_SERVICE_COST).value
            for c, row, p in zip(customers, rows, churn, strict=True)
        ]
    )
    # The model says P(no order within the horizon); over another span, under a constant hazard.
    span = (until - at) / DAY / cfg.horizon_days
    router = MethodScores("router", 1.0 - np.clip(churn, 1e-9, 1.0) ** span, clv)

    # BG/NBD on the very same snapshot facts (x repeat purchase days, t_x, T in weeks).
    x = rows[:, _F["orders_total"]] - 1.0
    t_x = rows[:, _F["order_recency_days"]] / _WEEK
    T = rows[:, _F["order_age_days"]] / _WEEK
    bg = fit_bgnbd(x, t_x, T)
    spend = rows[:, _F["spend_total"]]
    first_amount = np.asarray([_first_amount(per_customer[c], at) for c in customers])
    m_x = np.where(x > 0, (spend - first_amount) / np.maximum(x, 1.0), 0.0)
    gg = fit_gamma_gamma(x, m_x)
    expected = bg.expected_purchases(weeks, x, t_x, T)
    baseline = MethodScores("BG/NBD + Gamma-Gamma", bg.p_active(weeks, x, t_x, T), gg.expected_spend(x, m_x) * expected)

    methods = [router, baseline]
    figures = {m.name: _figures(active, revenue, m) for m in methods}
    calibration = {m.name: _calibration(active, m.p_active) for m in methods}
    differences = _bootstrap(active, revenue, router, baseline, cfg.bootstrap, cfg.seed, cfg.progress)
    notes = {
        "customers": len(customers),
        "active_again": int(active.sum()),
        "later_revenue": round(float(revenue.sum()), 2),
        "bgnbd": {"r": bg.r, "alpha": bg.alpha, "a": bg.a, "b": bg.b},
        "gamma_gamma": {"p": gg.p, "q": gg.q, "gamma": gg.gamma},
        "router_training": {
            "cutoffs": card["training"]["cutoffs"],
            "rows": card["training"]["rows"],
            "positives": card["training"]["positives"],
            "cv_roc_auc": card["metrics"]["cv"].get("roc_auc"),
        },
    }
    return BacktestResult(cfg, customers, active, revenue, methods, figures, calibration, differences, notes)


def _first_amount(events: Sequence[CustomerEvent], at: int) -> float:
    orders = sorted(
        (e for e in events if isinstance(e, OrderPlaced) and _ts(e.occurred_at) <= at), key=lambda e: e.occurred_at
    )
    return orders[0].amount if orders else 0.0


def _roc_auc(y: npt.NDArray[np.int8], s: Array) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s))


def _pr_auc(y: npt.NDArray[np.int8], s: Array) -> float:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y, s))


def _top_decile_share(revenue: Array, clv: Array) -> float:
    k = max(1, len(clv) // 10)
    top = np.argsort(-clv, kind="stable")[:k]
    total = float(revenue.sum())
    return float(revenue[top].sum()) / total if total else math.nan


def _figures(active: npt.NDArray[np.int8], revenue: Array, m: MethodScores) -> dict[str, float]:
    return {
        "roc_auc": _roc_auc(active, m.p_active),
        "pr_auc": _pr_auc(active, m.p_active),
        "top_decile_revenue_share": _top_decile_share(revenue, m.clv),
        "mean_p_active": float(m.p_active.mean()),
    }


def _calibration(active: npt.NDArray[np.int8], p: Array, bins: int = 10) -> list[dict[str, float]]:
    """Customers in ``bins`` equal-count groups by predicted probability: mean predicted vs observed."""
    order = np.argsort(p, kind="stable")
    out = []
    for chunk in np.array_split(order, bins):
        if len(chunk):
            out.append(
                {
                    "rows": float(len(chunk)),
                    "predicted": float(p[chunk].mean()),
                    "observed": float(active[chunk].mean()),
                }
            )
    return out


def _bootstrap(
    active: npt.NDArray[np.int8], revenue: Array, a: MethodScores, b: MethodScores, n: int, seed: int, progress: bool
) -> dict[str, dict[str, float]]:
    """Paired bootstrap over customers of ``a - b`` per figure: point estimate, 95 % interval, share of draws > 0."""
    rng = np.random.default_rng(seed)
    m = len(active)
    fns: dict[str, Callable[[npt.NDArray[np.intp], MethodScores], float]] = {
        "roc_auc": lambda i, s: _roc_auc(active[i], s.p_active[i]),
        "pr_auc": lambda i, s: _pr_auc(active[i], s.p_active[i]),
        "top_decile_revenue_share": lambda i, s: _top_decile_share(revenue[i], s.clv[i]),
    }
    draws: dict[str, list[float]] = {k: [] for k in fns}
    everyone = np.arange(m)
    iterator: Iterable[int] = range(n)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="paired bootstrap", unit=" draws", mininterval=0.5, file=sys.stderr)
    for _ in iterator:
        i = rng.integers(0, m, m)
        if active[i].sum() in (0, m):
            continue
        for k, fn in fns.items():
            draws[k].append(fn(i, a) - fn(i, b))
    out: dict[str, dict[str, float]] = {}
    for k, fn in fns.items():
        d = np.asarray(draws[k])
        out[k] = {
            "difference": fn(everyone, a) - fn(everyone, b),
            "ci_low": float(np.percentile(d, 2.5)) if len(d) else math.nan,
            "ci_high": float(np.percentile(d, 97.5)) if len(d) else math.nan,
            "share_above_zero": float((d > 0).mean()) if len(d) else math.nan,
            "draws": float(len(d)),
        }
    return out


def render(result: BacktestResult) -> str:
    """The backtest as Markdown: figures side by side, differences with their intervals, calibration."""
    cfg, notes = result.config, result.notes
    lines = [
        f"Backtest as of {cfg.at:%Y-%m-%d}, graded on ({cfg.at:%Y-%m-%d}, {cfg.until:%Y-%m-%d}]: "
        f"{notes['customers']:,} customers, {notes['active_again']:,} active again, later revenue {notes['later_revenue']:,.2f}",
        "",
        "| method | ROC-AUC | PR-AUC | top-decile share of later revenue (by CLV) | mean P(active again) |",
        "|---|---|---|---|---|",
    ]
    for name, f in result.figures.items():
        lines.append(
            f"| {name} | {f['roc_auc']:.4f} | {f['pr_auc']:.4f} | {f['top_decile_revenue_share']:.4f} | {f['mean_p_active']:.4f} |"
        )
    lines += [
        "",
        f"Router minus baseline, paired bootstrap over customers ({int(cfg.bootstrap)} draws, 95 % interval):",
        "",
        "| figure | difference | 95 % interval | share of draws > 0 |",
        "|---|---|---|---|",
    ]
    for k, d in result.differences.items():
        lines.append(
            f"| {k} | {d['difference']:+.4f} | [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] | {d['share_above_zero']:.3f} |"
        )
    lines += ["", "Calibration (P(active again), ten equal-count groups):", ""]
    names = list(result.calibration)
    lines.append("| group | " + " | ".join(f"{n} predicted | observed" for n in names) + " |")
    lines.append("|---|" + "---|---|" * len(names))
    for g in range(len(result.calibration[names[0]])):
        cells = []
        for n in names:
            row = result.calibration[n][g]
            cells.append(f"{row['predicted']:.3f} | {row['observed']:.3f}")
        lines.append(f"| {g + 1} | " + " | ".join(cells) + " |")
    bg, gg, rt = notes["bgnbd"], notes["gamma_gamma"], notes["router_training"]
    lines += [
        "",
        f"BG/NBD (weeks): r {bg['r']:.4f}, alpha {bg['alpha']:.4f}, a {bg['a']:.4f}, b {bg['b']:.4f}; "
        f"Gamma-Gamma: p {gg['p']:.4f}, q {gg['q']:.4f}, gamma {gg['gamma']:.4f}.",
        f"Router model: label 'no order within {cfg.horizon_days} days', {rt['rows']:,} rows "
        f"({rt['positives']:,} positive) at cutoffs {', '.join(c[:10] for c in rt['cutoffs'])}; CV ROC-AUC {rt['cv_roc_auc']}.",
    ]
    if cfg.command:
        lines += ["", f"Command: `{cfg.command}`"]
    return "\n".join(lines) + "\n"


def parse_date(text: str) -> datetime:
    """``YYYY-MM-DD`` -> the end of that day (UTC): events of that day count as before it."""
    d = date.fromisoformat(text)
    return datetime(d.year, d.month, d.day, tzinfo=UTC) + timedelta(days=1) - timedelta(seconds=1)
