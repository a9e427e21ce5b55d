"""Markdown report with PNG plots (ROC, calibration, lift, feature importance) beside the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["write_report"]


def write_report(
    card: dict[str, Any],
    out_md: Path,
    y: npt.NDArray[np.int8],
    p: npt.NDArray[np.float64],
) -> list[Path]:
    """Write ``out_md`` and its plots (holdout labels ``y``, probabilities ``p``); return the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    stem = out_md.with_suffix("")
    files: list[Path] = []

    def save(fig: Any, name: str) -> str:
        path = Path(f"{stem}-{name}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        files.append(path)
        return path.name

    hold = card["metrics"]["holdout"]
    cv = card["metrics"]["cv"]

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    fpr, tpr, _ = roc_curve(y, p)
    ax.plot(fpr, tpr, label=f"holdout AUC {hold.get('roc_auc', float('nan')):.3f}")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (time-based holdout)")
    ax.legend(loc="lower right")
    roc = save(fig, "roc")

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    bins = hold.get("calibration_bins", [])
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.plot([b["mean_predicted"] for b in bins], [b["observed_rate"] for b in bins], "o-", label="holdout")
    ax.set(xlabel="mean predicted probability", ylabel="observed churn rate", title="Calibration (10 bins)")
    ax.legend(loc="upper left")
    cal = save(fig, "calibration")

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    order = np.argsort(-p, kind="stable")
    deciles = np.array_split(y[order], 10)
    rate = float(y.mean()) or 1.0
    ax.bar(range(1, 11), [float(d.mean()) / rate for d in deciles])
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set(xlabel="decile of predicted risk (1 = riskiest)", ylabel="lift over base rate", title="Lift by decile")
    lift = save(fig, "lift")

    fig, ax = plt.subplots(figsize=(6, 6))
    imp = sorted(card["model"]["feature_importance_gain"].items(), key=lambda kv: kv[1])
    ax.barh([k for k, _ in imp], [v for _, v in imp])
    ax.set(xlabel="share of split gain", title="Feature importance")
    importance = save(fig, "importance")

    def row(name: str, key: str, fmt: str = "{:.4f}") -> str:
        h, c = hold.get(key), cv.get(key)
        return f"| {name} | {fmt.format(h) if h is not None else '-'} | {fmt.format(c) if c is not None else '-'} |"

    tr = card["training"]
    lat = card["latency_us"]
    lines = [
        f"# Churn model {card['version']}",
        "",
        f"Label: {card['label']['definition']}.",
        "",
        f"Trained on `{tr['events_file']}` ({tr['events']:,} events, {tr['window']['first_event']} .. "
        f"{tr['window']['last_event']}); training cutoffs {', '.join(c[:10] for c in tr['cutoffs'])} "
        f"({tr['rows']:,} rows, {tr['customers']:,} customers, base rate {tr['base_rate']:.3f}); "
        f"time-based holdout at {', '.join(c[:10] for c in tr['holdout_cutoff'])}.",
        "",
        "Reproduce:",
        "",
        "```",
        card["command"],
        "```",
        "",
        "## Metrics",
        "",
        "| metric | time-based holdout | grouped k-fold CV |",
        "|---|---|---|",
        row("rows", "rows", "{:,}"),
        row("prevalence", "prevalence"),
        row("ROC-AUC", "roc_auc"),
        row("PR-AUC", "pr_auc"),
        row("Brier", "brier", "{:.5f}"),
        row("Brier of the base rate", "brier_base_rate", "{:.5f}"),
        row("Brier skill", "brier_skill"),
        row("top-decile lift", "top_decile_lift", "{:.2f}"),
        row("top-decile capture", "top_decile_capture"),
        "",
        f"ONNX vs native LightGBM on the holdout: max abs difference "
        f"{card['parity']['max_abs_diff_onnx_vs_native']:.2e}.",
        "",
        f"Single-row latency (median, this machine): ONNX `ChurnModel.predict_one` "
        f"{lat['onnx_predict_one_median']:.1f} µs, plain `session.run` {lat['onnx_session_run_median']:.1f} µs, "
        f"native LightGBM `Booster.predict` {lat['native_median']:.1f} µs.",
        "",
        "## Calibration (holdout)",
        "",
        "| bin | rows | mean predicted | observed |",
        "|---|---|---|---|",
        *[f"| {b['bin']} | {b['rows']} | {b['mean_predicted']:.3f} | {b['observed_rate']:.3f} |" for b in bins],
        "",
        "## Plots",
        "",
        f"![ROC]({roc}) ![Calibration]({cal})",
        "",
        f"![Lift]({lift})",
        "",
        f"![Feature importance]({importance})",
        "",
    ]
    out_md.write_text("\n".join(lines))
    files.append(out_md)
    return files
