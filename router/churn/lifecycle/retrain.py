"""``router retrain``: a candidate from the event history, judged against the live model, promoted only if better.

1. **Window.** The most recent holdout window that has a complete label horizon: holdout cutoff =
   the day of the log's last event minus the horizon; training cutoffs are stacked ``--step`` apart
   and end one horizon before it (no training label reaches into the holdout), as in ``router train``.
2. **Candidate.** :func:`router.churn.training.pipeline.run`, the very pipeline of ``router train``
   (replay through the serving reducer and features, grouped CV, Platt, ONNX, card, report).
3. **Evaluation.** Candidate and live model (the announced one, else ``ROUTER_MODEL_PATH``) score the
   same holdout rows through :class:`~router.churn.model.ChurnModel` (the serving class): ROC-AUC,
   PR-AUC, Brier.
4. **Offline shadow.** On the holdout customers as of the holdout cutoff: how often the two models
   put a customer on the same side of the churn alert threshold, and in the same service tier (CLV
   percentile in the population scored by that model, the policy's tier cut-offs).
5. **Gate.** Promote when the candidate's ROC-AUC beats the live model's by ``ROUTER_MODEL_PROMOTE_MARGIN``
   and its Brier score is no worse. A live model that cannot be loaded (missing, corrupt, trained on
   other features than this code's) is replaced by a candidate that ranks better than chance by the
   margin and beats the base-rate forecast: keeping a model no process can load helps nobody.
6. **Promotion.** The candidate's ``.onnx`` and card are copied into the models directory under the
   next free ``churn-vN`` name and announced in Redis exactly as ``POST /v1/admin/model/reload``
   does (:meth:`StateStore.announce`): every API worker and state consumer follows within
   ``ROUTER_MODEL_FOLLOW_S``.

A promotion report (Markdown + PNG) is written in every case.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from router.churn.model import ChurnModel, Comparison, ModelError, compare
from router.churn.training.dataset import TRAINING_HASH_KEY, Dataset, LabelKind
from router.core.identity import IdentityHasher
from router.core.reducer import Snapshot, fold
from router.settings import Settings

__all__ = [
    "EXIT_ANNOUNCE_FAILED",
    "EXIT_BAD_INPUT",
    "EXIT_KEPT",
    "EXIT_NO_CANDIDATE",
    "EXIT_PROMOTED",
    "Figures",
    "RetrainConfig",
    "RetrainResult",
    "gate",
    "retrain",
]

EXIT_PROMOTED = 0
EXIT_KEPT = 1
"""The candidate is not better by the margin: the live model stays."""
EXIT_BAD_INPUT = 2
EXIT_NO_CANDIDATE = 3
"""No usable candidate (too few positives, a window the log does not cover, a failed export)."""
EXIT_ANNOUNCE_FAILED = 4
"""Promoted and installed, but Redis did not take the announcement: no process switched."""

Status = Literal["promoted", "kept", "no_candidate", "announce_failed"]


class Figures(msgspec.Struct, frozen=True, kw_only=True):
    """A model's figures on the holdout rows."""

    rows: int
    positives: int
    roc_auc: float
    pr_auc: float
    brier: float
    brier_base_rate: float
    """Brier score of the constant forecast at the training base rate."""


@dataclass
class RetrainConfig:
    events: Path
    work_dir: Path
    """Where the candidate (and its training report) and the promotion report are written."""
    models_dir: Path
    """Where a promoted model is installed (default: beside ``ROUTER_MODEL_PATH``)."""
    margin: float
    horizon_days: int | None = None
    """None: the live model's horizon (its card), else 90."""
    label: LabelKind | None = None
    """None: the live model's label kind (its card), else ``cancel``."""
    stack: int = 4
    step_days: int = 60
    folds: int = 5
    seed: int = 7
    holdout: datetime | None = None
    """None: the most recent cutoff whose horizon the log covers."""
    progress: bool = True
    command: str = "router retrain"
    dry_run: bool = False
    """Evaluate and report, never install or announce."""


@dataclass
class RetrainResult:
    status: Status
    reason: str
    holdout_cutoff: datetime | None = None
    training_cutoffs: list[datetime] = field(default_factory=list)
    live_version: str = "none"
    live_path: str = ""
    live_error: str = ""
    live: Figures | None = None
    candidate_version: str = ""
    candidate: Figures | None = None
    shadow: Comparison | None = None
    tier_agreement: float | None = None
    tier_moves: dict[str, dict[str, int]] = field(default_factory=dict)
    """Live tier -> candidate tier -> customers."""
    installed: str = ""
    outcome_labels: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    report: str = ""
    curves: dict[str, Any] = field(default_factory=dict)
    """Holdout labels and both models' probabilities, for the report's plots (not serialised)."""

    @property
    def exit_code(self) -> int:
        return {
            "promoted": EXIT_PROMOTED,
            "kept": EXIT_KEPT,
            "no_candidate": EXIT_NO_CANDIDATE,
            "announce_failed": EXIT_ANNOUNCE_FAILED,
        }[self.status]


def gate(live: Figures | None, candidate: Figures, margin: float) -> tuple[bool, str]:
    """Promote? and why, in words. ``live`` None: the live model cannot be loaded."""
    if live is None:
        ok = candidate.roc_auc >= 0.5 + margin and candidate.brier < candidate.brier_base_rate
        return ok, (
            f"the live model cannot be loaded; the candidate {'ranks' if ok else 'does not rank'} better than "
            f"chance by the margin (ROC-AUC {candidate.roc_auc:.4f} vs {0.5 + margin:.4f}) "
            f"{'and' if ok else 'or'} {'beats' if candidate.brier < candidate.brier_base_rate else 'does not beat'} "
            f"the base-rate forecast (Brier {candidate.brier:.5f} vs {candidate.brier_base_rate:.5f})"
        )
    gain = candidate.roc_auc - live.roc_auc
    better = gain >= margin
    calibrated = candidate.brier <= live.brier
    ok = better and calibrated
    return ok, (
        f"ROC-AUC {candidate.roc_auc:.4f} vs {live.roc_auc:.4f} ({gain:+.4f}, margin {margin:.4f}: "
        f"{'met' if better else 'not met'}); Brier {candidate.brier:.5f} vs {live.brier:.5f} "
        f"({'no worse' if calibrated else 'worse'})"
    )


def figures(y: npt.NDArray[np.int8], p: npt.NDArray[np.float64], base_rate: float) -> Figures:
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    return Figures(
        rows=len(y),
        positives=int(y.sum()),
        roc_auc=float(roc_auc_score(y, p)),
        pr_auc=float(average_precision_score(y, p)),
        brier=float(brier_score_loss(y, p)),
        brier_base_rate=float(np.mean((y - base_rate) ** 2)),
    )


class _When(msgspec.Struct):
    occurred_at: datetime


def last_event_time(path: Path) -> datetime:
    """The latest ``occurred_at`` of a JSON Lines log (one cheap pass: only that field is decoded)."""
    dec = msgspec.json.Decoder(_When)
    latest: datetime | None = None
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                at = dec.decode(line).occurred_at
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                raise ValueError(f"{path}:{lineno}: invalid event: {exc}") from None
            if latest is None or at > latest:
                latest = at
    if latest is None:
        raise ValueError(f"{path} holds no events")
    return latest if latest.tzinfo else latest.replace(tzinfo=UTC)


def _live_model(settings: Settings, announced_path: str | None) -> tuple[ChurnModel | None, str, str]:
    """(model, path, error): the announced model if it loads, else the configured one."""
    errors = []
    for path in dict.fromkeys(p for p in (announced_path, settings.model.path) if p):
        try:
            return ChurnModel.load(path, business=settings.model.business), path, ""
        except ModelError as exc:
            errors.append(str(exc))
        except Exception as exc:  # a malformed card can trip the loader in other ways
            errors.append(f"{path} is unusable ({type(exc).__name__}: {exc})")
    return None, announced_path or settings.model.path, "; ".join(errors) or "no model configured"


def next_version(models_dir: Path, *taken: str) -> str:
    """``churn-vN`` with N one more than any in ``models_dir`` or ``taken``."""
    numbers = [0]
    for name in [*(p.stem for p in models_dir.glob("churn-v*.onnx")), *taken]:
        m = re.fullmatch(r"churn-v(\d+)", name)
        if m:
            numbers.append(int(m.group(1)))
    return f"churn-v{max(numbers) + 1}"


def retrain(cfg: RetrainConfig, settings: Settings, announced: Any = None) -> RetrainResult:
    """Build, evaluate, shadow and gate a candidate; install it when promoted (announcing is the caller's,
    :func:`promote_and_announce`, since it needs Redis). ``announced``: the current model announcement."""
    from router.churn.training.pipeline import TrainConfig, run, stacked_cutoffs

    began = time.monotonic()
    live, live_path, live_error = _live_model(settings, announced.path if announced is not None else None)
    live_card = live.card if live is not None else {}
    label: LabelKind = cfg.label or _card_label(live_card) or "cancel"
    horizon_days = cfg.horizon_days or int(live_card.get("horizon_days", 0) or 0) or settings.model.horizon_days
    horizon = timedelta(days=horizon_days)
    result = RetrainResult(
        status="no_candidate",
        reason="",
        live_version=live.version if live is not None else "none",
        live_path=str(live_path),
        live_error=live_error,
    )
    if cfg.holdout is not None:
        holdout = cfg.holdout
    else:
        last = last_event_time(cfg.events)
        holdout = datetime(last.year, last.month, last.day, tzinfo=UTC) - horizon
    cutoffs = stacked_cutoffs(holdout - horizon, cfg.stack, cfg.step_days)
    result.holdout_cutoff, result.training_cutoffs = holdout, cutoffs
    version = next_version(cfg.models_dir, result.live_version)
    result.candidate_version = version
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    out = cfg.work_dir / f"{version}.onnx"
    _say(cfg, f"live model: {result.live_version} ({live_path}){'' if live else ' UNUSABLE: ' + live_error}")
    _say(cfg, f"candidate {version}: label {label}, horizon {horizon_days}d, training cutoffs "
              f"{', '.join(f'{c:%Y-%m-%d}' for c in cutoffs)}, holdout cutoff {holdout:%Y-%m-%d}")  # fmt: skip
    snaps: dict[str, Snapshot] = {}
    rows: dict[str, Dataset] = {}
    try:
        card = run(
            TrainConfig(
                events=cfg.events,
                out=out,
                cutoffs=cutoffs,
                holdout=holdout,
                horizon_days=horizon_days,
                label=label,
                folds=cfg.folds,
                seed=cfg.seed,
                lateness_s=settings.stream.lateness_s,
                command=cfg.command,
                progress=cfg.progress,
                report=True,
                # One replay: the holdout customers' snapshots (for tiers) and rows (for the live model) on the way.
                tap=lambda events: _tap(events, holdout, snaps, settings.stream.lateness_s),
                on_rows=lambda _, hold: rows.__setitem__("holdout", hold),
            )
        )
        candidate = ChurnModel.load(out, business=settings.model.business)
    except (ValueError, ModelError) as exc:
        result.reason = f"no usable candidate: {exc}"
        result.seconds = round(time.monotonic() - began, 1)
        return result
    result.outcome_labels = dict(card["training"].get("outcome_labels", {}))

    data = rows["holdout"]
    X = data.X.astype(np.float32)
    y = data.y
    base_rate = float(card["training"]["base_rate"])
    q = candidate.predict(X)
    result.candidate = figures(y, q, base_rate)
    curves: dict[str, Any] = {"y": y, "candidate": q}
    if live is not None:
        p = live.predict(X)
        curves["live"] = p
        result.live = figures(y, p, base_rate)
        result.shadow = compare(live, candidate, X, alert_threshold=settings.stream.churn_alert_threshold)
        result.tier_agreement, result.tier_moves = _tiers(settings, snaps, data.customer_ids, data.X, p, q)
    result.curves = curves
    promote, why = gate(result.live, result.candidate, cfg.margin)
    result.reason = why
    result.status = "promoted" if promote else "kept"
    if promote and not cfg.dry_run:
        cfg.models_dir.mkdir(parents=True, exist_ok=True)
        target = cfg.models_dir / out.name
        if target.exists() or target.with_suffix(".json").exists():
            raise FileExistsError(f"{target} exists: will not overwrite an installed model")
        shutil.copyfile(out.with_suffix(".json"), target.with_suffix(".json"))
        shutil.copyfile(out, target)
        ChurnModel.load(target, business=settings.model.business)  # what the processes will load
        result.installed = str(target.resolve())
    elif promote:
        result.reason += " (dry run: not installed)"
    result.seconds = round(time.monotonic() - began, 1)
    return result


def _card_label(card: dict[str, Any]) -> LabelKind | None:
    label = card.get("label")
    kind = label.get("kind") if isinstance(label, dict) else None
    return kind if kind in ("cancel", "inactivity") else None


def _tap(events: Any, cutoff: datetime, snaps: dict[str, Snapshot], lateness_s: int) -> Any:
    """Pass ``events`` through unchanged, folding those at or before ``cutoff`` into ``snaps``."""
    cut = cutoff.timestamp()
    hasher = IdentityHasher(TRAINING_HASH_KEY)
    for event in events:
        if event.occurred_at.timestamp() <= cut:
            snaps[event.customer_id], _ = fold(
                snaps.get(event.customer_id), event, lateness_s=lateness_s, hasher=hasher
            )
        yield event


def _tiers(
    settings: Settings,
    snaps: dict[str, Snapshot],
    ids: list[str],
    X: npt.NDArray[np.float64],
    p: npt.NDArray[np.float64],
    q: npt.NDArray[np.float64],
) -> tuple[float, dict[str, dict[str, int]]]:
    """Share of holdout customers in the same tier under both models, and the moves between tiers."""
    from router.core.scoring import assess
    from router.policy import load_policy

    policy = load_policy(settings.policy.path)

    def tiers(churn: npt.NDArray[np.float64]) -> list[str]:
        clv = np.asarray(
            [
                assess(snaps[cid], X[i].tolist(), float(churn[i]), settings.model, policy.service_prices).clv.value
                for i, cid in enumerate(ids)
            ]
        )
        # Percentile as serving computes it: share of the population with a lower CLV, ties half.
        order = np.sort(clv)
        below = np.searchsorted(order, clv, side="left")
        at = np.searchsorted(order, clv, side="right") - below
        pct = 100.0 * (below + at / 2.0) / max(1, len(clv))
        return [policy.tier_for(float(v)) for v in pct]

    a, b = tiers(p), tiers(q)
    moves: dict[str, dict[str, int]] = {}
    for x, z in zip(a, b, strict=True):
        moves.setdefault(x, {}).setdefault(z, 0)
        moves[x][z] += 1
    same = sum(x == z for x, z in zip(a, b, strict=True))
    return (same / len(a) if a else float("nan")), moves


def to_json(result: RetrainResult) -> dict[str, Any]:
    """The result without the plot data (for ``--json`` and the report's appendix)."""
    out: dict[str, Any] = {}
    for name in RetrainResult.__dataclass_fields__:
        if name == "curves":
            continue
        value = getattr(result, name)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, list):
            value = [v.isoformat() if isinstance(v, datetime) else v for v in value]
        elif isinstance(value, msgspec.Struct):
            value = msgspec.to_builtins(value)
        out[name] = value
    out["exit_code"] = result.exit_code
    plain: dict[str, Any] = json.loads(json.dumps(out, default=str))
    return plain


def _say(cfg: RetrainConfig, text: str) -> None:
    if cfg.progress:
        print(text, file=sys.stderr, flush=True)
