"""The promotion gate of ``router retrain``: better by the margin AND calibrated no worse."""

from __future__ import annotations

from pathlib import Path

from router.churn.lifecycle.retrain import Figures, gate, next_version


def _f(roc: float, brier: float, base: float = 0.12) -> Figures:
    return Figures(rows=1000, positives=150, roc_auc=roc, pr_auc=0.5, brier=brier, brier_base_rate=base)


def test_better_by_the_margin_and_no_worse_calibrated_is_promoted() -> None:
    ok, why = gate(_f(0.85, 0.080), _f(0.86, 0.079), margin=0.005)
    assert ok and "met" in why and "no worse" in why


def test_a_gain_below_the_margin_is_not_enough() -> None:
    ok, why = gate(_f(0.85, 0.080), _f(0.853, 0.070), margin=0.005)
    assert not ok and "not met" in why


def test_a_worse_brier_score_blocks_even_a_better_ranking() -> None:
    ok, why = gate(_f(0.85, 0.080), _f(0.90, 0.081), margin=0.005)
    assert not ok and "worse" in why


def test_an_unusable_live_model_is_replaced_by_a_sane_candidate_only() -> None:
    assert gate(None, _f(0.80, 0.09), margin=0.005)[0]
    assert not gate(None, _f(0.503, 0.09), margin=0.005)[0]  # no better than chance
    assert not gate(None, _f(0.80, 0.13), margin=0.005)[0]  # worse than the base-rate forecast


def test_versions_count_on_from_the_installed_and_the_live_model(tmp_path: Path) -> None:
    assert next_version(tmp_path) == "churn-v1"
    assert next_version(tmp_path, "churn-v1") == "churn-v2"
    (tmp_path / "churn-v7.onnx").write_bytes(b"")
    assert next_version(tmp_path, "churn-v2", "none") == "churn-v8"
