"""The promotion report of ``router retrain``: Markdown with the figures and the decision, one PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from router.churn.lifecycle.retrain import Figures, RetrainResult

__all__ = ["write_report"]

_TIERS = ("VIP", "Premium", "Standard", "Basic")


def write_report(result: RetrainResult, path: Path, *, margin: float, command: str) -> Path:
    """Write ``path`` (.md) and ``path`` with suffix .png; return the Markdown path."""
    png = path.with_suffix(".png")
    has_plot = _plot(result, png)
    title = {
        "promoted": "PROMOTED",
        "kept": "NOT PROMOTED: the live model stays",
        "no_candidate": "NO USABLE CANDIDATE: the live model stays",
        "announce_failed": "PROMOTED AND INSTALLED, NOT ANNOUNCED (Redis): no process switched",
    }[result.status]
    lines = [
        f"# Retrain: {result.candidate_version or 'candidate'} vs {result.live_version}: {title}",
        "",
        f"Command: `{command}`  ",
        f"Took {result.seconds} s.",
        "",
        "## Decision",
        "",
        f"Gate: promote when the candidate's holdout ROC-AUC beats the live model's by at least {margin:.4f} "
        "(`ROUTER_MODEL_PROMOTE_MARGIN`) and its Brier score is no worse; a live model that cannot be loaded is "
        "replaced by a candidate better than chance by the margin and better than the base-rate forecast.",
        "",
        f"**{result.reason}**",
        "",
    ]
    if result.installed:
        lines += [f"Installed as `{result.installed}` and announced to every API worker and state consumer.", ""]
    if result.live_error:
        lines += [f"Live model `{result.live_path}` cannot be loaded: {result.live_error}", ""]
    if result.holdout_cutoff is not None:
        cuts = ", ".join(f"{c:%Y-%m-%d}" for c in result.training_cutoffs)
        lines += [
            "## Window",
            "",
            f"Holdout: customers alive at {result.holdout_cutoff:%Y-%m-%d}, labelled by what happened in the "
            f"horizon after it (the most recent complete window of the log). Candidate training cutoffs: {cuts}.",
            "",
        ]
    if result.outcome_labels:
        o = result.outcome_labels
        lines += [
            f"Training rows labelled by outcome events: {o.get('churned', 0):,} churned, {o.get('renewed', 0):,} "
            f"renewed ({o.get('changed', 0):,} differ from the label inferred from cancellations/activity).",
            "",
        ]
    if result.candidate is not None:
        lines += ["## Holdout figures (same rows, same labels)", "", _table(result.live, result.candidate), ""]
    if result.shadow is not None:
        s = result.shadow
        lines += [
            "## Offline shadow on the holdout customers",
            "",
            "| | |",
            "|---|---|",
            f"| customers | {s.rows:,} |",
            f"| same side of the churn alert threshold | {s.alert_agreement * 100:.2f} % |",
            f"| alerts live / candidate | {s.alerts_live:,} / {s.alerts_candidate:,} |",
            f"| same service tier | {(result.tier_agreement or 0.0) * 100:.2f} % |",
            f"| mean / max absolute probability difference | {s.mean_abs_diff:.4f} / {s.max_abs_diff:.4f} |",
            f"| Spearman rank correlation | {s.spearman:.4f} |",
            f"| riskiest decile shared | {s.top_decile_overlap * 100:.1f} % |",
            "",
        ]
        if result.tier_moves:
            lines += ["Tier moves (rows: live model's tier, columns: candidate's):", ""]
            lines += ["| live \\ candidate | " + " | ".join(_TIERS) + " |", "|---" * (len(_TIERS) + 1) + "|"]
            for a in _TIERS:
                row = result.tier_moves.get(a, {})
                lines.append(f"| {a} | " + " | ".join(f"{row.get(b, 0):,}" for b in _TIERS) + " |")
            lines.append("")
    if has_plot:
        lines += [f"![ROC and calibration]({png.name})", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def _table(live: Figures | None, cand: Figures) -> str:
    def f(v: Figures | None, name: str, digits: int) -> str:
        return "n/a" if v is None else f"{getattr(v, name):.{digits}f}"

    rows = [
        "| | live | candidate |",
        "|---|---|---|",
        f"| rows (positive) | {'n/a' if live is None else f'{live.rows:,} ({live.positives:,})'} | "
        f"{cand.rows:,} ({cand.positives:,}) |",
        f"| ROC-AUC | {f(live, 'roc_auc', 4)} | {f(cand, 'roc_auc', 4)} |",
        f"| PR-AUC | {f(live, 'pr_auc', 4)} | {f(cand, 'pr_auc', 4)} |",
        f"| Brier | {f(live, 'brier', 5)} | {f(cand, 'brier', 5)} |",
        f"| Brier of the base rate | {f(live, 'brier_base_rate', 5)} | {f(cand, 'brier_base_rate', 5)} |",
    ]
    return "\n".join(rows)


def _plot(result: RetrainResult, png: Path) -> bool:
    curves: dict[str, Any] = result.curves
    if "y" not in curves:
        _empty(result, png)
        return True
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import roc_curve

    y = curves["y"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    for name, color in (("live", "#888888"), ("candidate", "#1f77b4")):
        if name not in curves:
            continue
        p = curves[name]
        fpr, tpr, _ = roc_curve(y, p)
        figs = result.live if name == "live" else result.candidate
        auc = f" (ROC-AUC {figs.roc_auc:.4f})" if figs is not None else ""
        ax1.plot(fpr, tpr, color=color, label=f"{name}{auc}")
        obs, pred = calibration_curve(y, p, n_bins=10, strategy="quantile")
        brier = f" (Brier {figs.brier:.4f})" if figs is not None else ""
        ax2.plot(pred, obs, marker="o", color=color, label=f"{name}{brier}")
    ax1.plot([0, 1], [0, 1], ls=":", color="black", lw=0.8)
    ax1.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC on the holdout")
    ax2.plot([0, 1], [0, 1], ls=":", color="black", lw=0.8)
    ax2.set(xlabel="mean predicted", ylabel="observed rate", title="Calibration (deciles)")
    for ax in (ax1, ax2):
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"{result.candidate_version} vs {result.live_version}: {result.status}")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return True


def _empty(result: RetrainResult, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, f"no candidate: {result.reason[:90]}", ha="center", va="center", fontsize=8, wrap=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    _ = np  # numpy is imported for the plotting libraries' arrays
