"""Train, calibrate, evaluate and export the churn model.

LightGBM gives a raw margin; a Platt sigmoid fitted on out-of-fold margins calibrates it.
The exported ONNX graph is the tree ensemble (as a regressor on the raw margin) followed by
``sigmoid(a * margin + b)``, so the served probability is the calibrated one with no
Python in between.
"""

from __future__ import annotations

import hashlib
import json
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from router.churn.training.dataset import Dataset, LabelKind, label_definition
from router.core.features import FEATURE_NAMES, N_FEATURES

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "Trained",
    "export_onnx",
    "metrics",
    "native_predict",
    "train_model",
]

INPUT_NAME = "features"
OUTPUT_NAME = "churn_probability"

LGB_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_data_in_leaf": 40,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "num_threads": 2,
    "verbose": -1,
    "deterministic": True,
    "force_row_wise": True,
}
N_TREES = 160


@dataclass
class Trained:
    """A fitted model: the booster plus its Platt calibration ``sigmoid(a * margin + b)``."""

    booster: Any
    platt_a: float
    platt_b: float
    cv: dict[str, Any]
    oof: npt.NDArray[np.float64]
    """Calibrated out-of-fold probabilities of the training rows."""
    params: dict[str, Any] | None = None
    """LightGBM parameters used (None: :data:`LGB_PARAMS`)."""
    trees: int = N_TREES


def _sigmoid(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return 1.0 / (1.0 + np.exp(-x))


def _fit(X: npt.NDArray[np.float32], y: npt.NDArray[np.int8], seed: int, params: dict[str, Any], trees: int) -> Any:
    import lightgbm as lgb

    booster = lgb.train(dict(params, seed=seed), lgb.Dataset(X, label=y, free_raw_data=True), num_boost_round=trees)
    return lgb.Booster(model_str=_float32_thresholds(booster.model_to_string()))


def _float32_thresholds(model: str) -> str:
    """Round every split threshold down to a float32 value.

    ONNX tree ensembles compare in float32. A float64 threshold between two adjacent
    float32 values would send an input equal to the upper one left natively and right in
    ONNX. The largest float32 <= t splits float32 inputs exactly as t does, and survives the
    cast, so native and ONNX decide every split alike.
    """
    out = []
    for line in model.splitlines():
        if line.startswith("threshold="):
            t = np.array(line[len("threshold=") :].split(), dtype=np.float64)
            t32 = t.astype(np.float32)
            over = t32.astype(np.float64) > t
            t32[over] = np.nextafter(t32[over], np.float32(-np.inf))
            line = "threshold=" + " ".join(f"{v:.17g}" for v in t32.astype(np.float64))
        elif line.startswith("tree_sizes="):
            continue  # byte offsets of the trees, no longer right; LightGBM then parses sequentially
        out.append(line)
    return "\n".join(out) + "\n"


def _platt(margin: npt.NDArray[np.float64], y: npt.NDArray[np.int8]) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1e6, max_iter=1000)
    lr.fit(margin.reshape(-1, 1), y)
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])


def native_predict(trained: Trained, X: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Calibrated probabilities from the native LightGBM booster (float32 inputs, as served)."""
    margin = np.asarray(trained.booster.predict(X.astype(np.float64), raw_score=True), dtype=np.float64)
    return _sigmoid(trained.platt_a * margin + trained.platt_b)


def train_model(
    data: Dataset,
    *,
    folds: int = 5,
    seed: int = 7,
    progress: bool = False,
    params: dict[str, Any] | None = None,
    trees: int = N_TREES,
) -> Trained:
    """Group k-fold CV (by customer) for metrics and calibration, then the final fit on all rows.

    ``params`` override :data:`LGB_PARAMS` (e.g. fewer leaves for a few thousand customers).
    """
    from sklearn.model_selection import GroupKFold

    lgb_params = dict(LGB_PARAMS, **(params or {}))

    X = data.X.astype(np.float32)
    y = data.y
    groups = np.asarray(data.customer_ids)
    margin = np.zeros(len(y), dtype=np.float64)
    splits = list(GroupKFold(n_splits=folds).split(X, y, groups))
    iterator: Sequence[tuple[Any, Any]] = splits
    if progress:
        from tqdm import tqdm

        iterator = tqdm(splits, desc=f"{folds}-fold CV", unit=" fold", disable=None)
    fold_auc: list[float] = []
    for train_idx, test_idx in iterator:
        booster = _fit(X[train_idx], y[train_idx], seed, lgb_params, trees)
        margin[test_idx] = booster.predict(X[test_idx].astype(np.float64), raw_score=True)
        fold_auc.append(_auc(y[test_idx], margin[test_idx]))
    a, b = _platt(margin, y)
    oof = _sigmoid(a * margin + b)
    cv = metrics(y, oof, base_rate=float(y.mean()))
    cv["folds"] = folds
    cv["fold_roc_auc"] = [round(v, 4) for v in fold_auc]
    cv["note"] = "out-of-fold predictions; folds grouped by customer; Platt fitted on these same margins"
    booster = _fit(X, y, seed, lgb_params, trees)
    return Trained(booster=booster, platt_a=a, platt_b=b, cv=cv, oof=oof, params=lgb_params, trees=trees)


def _auc(y: npt.NDArray[np.int8], score: npt.NDArray[np.float64]) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else float("nan")


def metrics(y: npt.NDArray[np.int8], p: npt.NDArray[np.float64], *, base_rate: float) -> dict[str, Any]:
    """Ranking, calibration and lift figures of probabilities ``p`` against labels ``y``.

    ``base_rate`` is the constant forecast the Brier score is compared with (the training
    prevalence, so the holdout baseline does not peek at holdout labels).
    """
    from sklearn.metrics import average_precision_score, brier_score_loss

    n = len(y)
    positives = int(y.sum())
    out: dict[str, Any] = {"rows": n, "positives": positives, "prevalence": round(positives / n, 5) if n else 0.0}
    if not n or positives in (0, n):
        return out
    order = np.argsort(-p, kind="stable")
    top = order[: max(1, n // 10)]
    top_rate = float(y[top].mean())
    bins = []
    edges = np.linspace(0.0, 1.0, 11)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, 9)
    for i in range(10):
        m = idx == i
        if m.any():
            bins.append(
                {
                    "bin": f"{edges[i]:.1f}-{edges[i + 1]:.1f}",
                    "rows": int(m.sum()),
                    "mean_predicted": round(float(p[m].mean()), 4),
                    "observed_rate": round(float(y[m].mean()), 4),
                }
            )
    out.update(
        roc_auc=round(_auc(y, p), 4),
        pr_auc=round(float(average_precision_score(y, p)), 4),
        brier=round(float(brier_score_loss(y, p)), 5),
        brier_base_rate=round(float(np.mean((y - base_rate) ** 2)), 5),
        base_rate_used=round(base_rate, 5),
        mean_predicted=round(float(p.mean()), 5),
        top_decile_rate=round(top_rate, 4),
        top_decile_lift=round(top_rate / (positives / n), 3),
        top_decile_capture=round(float(y[top].sum()) / positives, 4),
        calibration_bins=bins,
    )
    out["brier_skill"] = round(1.0 - out["brier"] / out["brier_base_rate"], 4)
    return out


def export_onnx(trained: Trained, path: Path) -> bytes:
    """Write the calibrated model as ONNX (input ``features`` [N, n_features] float32,
    output ``churn_probability`` [N]); return the bytes written."""
    import lightgbm as lgb
    import onnx
    import onnxmltools
    from onnx import TensorProto, helper
    from onnxmltools.convert.common.data_types import FloatTensorType

    # Convert the ensemble as a regressor so the graph yields the raw margin; the binary
    # objective would bake in an uncalibrated sigmoid.
    text = trained.booster.model_to_string().replace("objective=binary sigmoid:1", "objective=regression")
    raw = lgb.Booster(model_str=text)
    raw.params["objective"] = "regression"
    model = onnxmltools.convert_lightgbm(
        raw, initial_types=[(INPUT_NAME, FloatTensorType([None, N_FEATURES]))], target_opset=15
    )
    graph = model.graph
    margin = graph.output[0].name
    del graph.output[:]
    graph.initializer.extend(
        [
            helper.make_tensor("platt_a", TensorProto.FLOAT, [], [trained.platt_a]),
            helper.make_tensor("platt_b", TensorProto.FLOAT, [], [trained.platt_b]),
            helper.make_tensor("flat_shape", TensorProto.INT64, [1], [-1]),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Mul", [margin, "platt_a"], ["scaled"], name="platt_scale"),
            helper.make_node("Add", ["scaled", "platt_b"], ["logit"], name="platt_shift"),
            helper.make_node("Sigmoid", ["logit"], ["probability_2d"], name="platt_sigmoid"),
            helper.make_node("Reshape", ["probability_2d", "flat_shape"], [OUTPUT_NAME], name="flatten"),
        ]
    )
    graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [None]))
    graph.name = "churn"
    model.doc_string = "Churn probability within the horizon; LightGBM + Platt calibration"
    # The converter lists opsets in set order (varies with the hash seed): sort for byte-identical reruns.
    opsets = sorted((o.domain, o.version) for o in model.opset_import)
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(domain, version) for domain, version in opsets)
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def latency_us(fn: Any, rows: npt.NDArray[np.float32], repeat: int) -> float:
    """Median wall time of ``fn(row)`` in microseconds over ``repeat`` single-row calls."""
    samples = []
    n = len(rows)
    for i in range(repeat):
        row = rows[i % n]
        t = time.perf_counter_ns()
        fn(row)
        samples.append(time.perf_counter_ns() - t)
    return round(statistics.median(samples) / 1000.0, 2)


def feature_importance(trained: Trained) -> dict[str, float]:
    """Share of total split gain per feature."""
    gain = np.asarray(trained.booster.feature_importance(importance_type="gain"), dtype=np.float64)
    total = float(gain.sum()) or 1.0
    return {name: round(float(g) / total, 5) for name, g in zip(FEATURE_NAMES, gain, strict=True)}


def _sha256_file(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError:
        return None


def _generator(events_path: str, events_sha256: str | None) -> dict[str, Any]:
    """``{"generator": ...}`` when ``router generate`` wrote this very file (its sidecar names its SHA-256)."""
    try:
        meta = json.loads(Path(f"{events_path}.generator.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(meta, dict) or meta.get("events_sha256") != events_sha256:
        return {}
    return {"generator": meta}


def build_card(
    *,
    version: str,
    onnx_bytes: bytes,
    trained: Trained,
    train: Dataset,
    holdout: Dataset,
    label: LabelKind,
    horizon_days: int,
    events_path: str,
    activity: frozenset[str] | None = None,
    holdout_metrics: dict[str, Any],
    parity_max_abs: float,
    latency: dict[str, float],
    command: str,
) -> dict[str, Any]:
    """The model card (JSON beside the .onnx): everything needed to judge and serve the model."""
    import lightgbm
    import onnxruntime
    import sklearn

    reference = np.median(train.X, axis=0)
    return {
        "version": version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "feature_names": list(FEATURE_NAMES),
        "n_features": N_FEATURES,
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": [None, N_FEATURES]},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": [None], "meaning": "P(label = 1)"},
        "horizon_days": horizon_days,
        "label": {
            "kind": label,
            "business": "subscription" if label == "cancel" else "transactional",
            "definition": label_definition(label, horizon_days, activity),
            **({"activity": sorted(activity)} if label == "inactivity" and activity is not None else {}),
        },
        "training": {
            "events_file": events_path,
            "events_sha256": (events_sha256 := _sha256_file(events_path)),
            **_generator(events_path, events_sha256),
            "events": train.events,
            "window": {
                "first_event": train.first_event.isoformat() if train.first_event else None,
                "last_event": train.last_event.isoformat() if train.last_event else None,
            },
            "cutoffs": sorted({train.cutoffs[k].isoformat() for k in np.unique(train.cutoff_index)}),
            "holdout_cutoff": sorted({holdout.cutoffs[k].isoformat() for k in np.unique(holdout.cutoff_index)}),
            "rows": len(train.y),
            "customers": len(set(train.customer_ids)),
            "positives": int(train.y.sum()),
            "base_rate": round(float(train.y.mean()), 5),
            "skipped_rows": train.skipped,
            "outcome_labels": train.outcome_labels(),
            "replay": "router.core.reducer.fold per customer in file order, events with occurred_at <= cutoff; "
            "router.core.features.features(snapshot, cutoff)",
        },
        "model": {
            "type": "lightgbm",
            "params": {k: v for k, v in (trained.params or LGB_PARAMS).items() if k not in ("verbose", "num_threads")},
            "trees": trained.trees,
            "calibration": {
                "method": "platt",
                "a": trained.platt_a,
                "b": trained.platt_b,
                "fitted_on": "out-of-fold raw margins of the training rows",
            },
            "feature_importance_gain": feature_importance(trained),
        },
        "reference": {
            "kind": "training median",
            "values": {n: float(v) for n, v in zip(FEATURE_NAMES, reference, strict=True)},
        },
        "metrics": {"holdout": holdout_metrics, "cv": trained.cv},
        "parity": {"holdout_rows": len(holdout.y), "max_abs_diff_onnx_vs_native": parity_max_abs},
        "latency_us": latency,
        "onnx": {"sha256": hashlib.sha256(onnx_bytes).hexdigest(), "bytes": len(onnx_bytes), "opset": 15},
        "environment": {
            "python": platform.python_version(),
            "lightgbm": lightgbm.__version__,
            "onnxruntime": onnxruntime.__version__,
            "scikit-learn": sklearn.__version__,
            "machine": platform.machine(),
        },
    }
