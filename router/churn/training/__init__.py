"""Offline training of the churn model from event logs (``router train``).

Rows come from replaying events through the serving reducer and feature code
(:mod:`router.churn.training.dataset`); the model is LightGBM with Platt calibration,
exported to ONNX with a model card and a report (:mod:`router.churn.training.pipeline`).
Heavy libraries (lightgbm, sklearn, onnx, matplotlib) are imported only when training.
"""

from __future__ import annotations

from router.churn.training.dataset import TRAINING_HASH_KEY, Dataset, build_dataset, read_events

__all__ = ["TRAINING_HASH_KEY", "Dataset", "build_dataset", "read_events"]
