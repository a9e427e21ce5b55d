"""The committed model's card, checked by recomputation rather than read.

The card says what the model scored on its time-based holdout. Here the same holdout is rebuilt
from scratch for a fixed fifth of the customers: the demo history regenerated from the generator
parameters the card records (the generator is deterministic per customer), replayed through the
training dataset builder (the one reducer and feature code) at the card's holdout cutoff, scored
with the committed ONNX file and its ROC-AUC computed. A different model file changes the figure
(and a file that does not match its card does not even load), so this test fails with it.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sklearn.metrics import roc_auc_score

from router.churn.model import ChurnModel
from router.churn.training.dataset import build_dataset
from router.devstack.demo import generate_history, history_window
from router.settings import ModelSettings, StreamSettings

EVERY = 5
"""Customers C000001, C000006, ...: 1,000 of the 5,000 in the training history."""
SAMPLE_ROWS, SAMPLE_POSITIVES = 592, 83
SAMPLE_ROC_AUC = 0.86837
"""The committed model on this sample (recomputed on the whole holdout, the same code gives the card's 0.8769)."""


def test_the_committed_models_holdout_roc_auc_is_recomputed_from_the_generator() -> None:
    model = ChurnModel.load(ModelSettings().path)  # refuses a file whose SHA-256 is not the card's
    card = model.card
    gen = card["training"]["generator"]
    start, end = history_window(gen["months"], datetime.fromisoformat(gen["end"]).replace(tzinfo=UTC))
    events = list(generate_history(gen["customers"], start, end, gen["seed"], every=EVERY))
    (cutoff,) = card["training"]["holdout_cutoff"]
    holdout = build_dataset(
        events,
        [datetime.fromisoformat(cutoff)],
        horizon_days=card["horizon_days"],
        label=card["label"]["kind"],
        lateness_s=StreamSettings().lateness_s,
    )
    assert (len(holdout.y), int(holdout.y.sum())) == (SAMPLE_ROWS, SAMPLE_POSITIVES)
    auc = float(roc_auc_score(holdout.y, model.predict(holdout.X)))
    assert auc == pytest.approx(SAMPLE_ROC_AUC, abs=5e-5)
    # The sample agrees with the card's figure for the whole holdout, within the sampling noise of 592 rows.
    assert abs(auc - card["metrics"]["holdout"]["roc_auc"]) < 0.02
