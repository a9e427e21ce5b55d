"""The committed churn model as the service loads and uses it."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from router.churn.model import ChurnModel, ModelError, compare, describe
from router.core.features import FEATURE_NAMES, N_FEATURES, features
from router.core.identity import IdentityHasher
from router.core.reducer import Snapshot, fold
from router.devstack.demo import generate_history, history_window
from router.settings import Settings

MODEL = Path(Settings().model.path)


@pytest.fixture(scope="module")
def model() -> ChurnModel:
    return ChurnModel.load(MODEL)


@pytest.fixture(scope="module")
def rows() -> npt.NDArray[np.float32]:
    """Feature rows of a fresh synthetic population, computed the way the consumer does."""
    start, end = history_window(5)
    hasher = IdentityHasher(b"test-key-0123456789abcdef")
    snaps: dict[str, Snapshot] = {}
    for e in generate_history(250, start, end, seed=99):
        snaps[e.customer_id], _ = fold(snaps.get(e.customer_id), e, lateness_s=86_400, hasher=hasher)
    as_of = int(end.timestamp())
    return np.asarray([features(s, as_of) for s in snaps.values()], dtype=np.float32)


def test_committed_model_loads_with_its_card(model: ChurnModel) -> None:
    assert model.version == "churn-v1"
    assert model.card["feature_names"] == list(FEATURE_NAMES)
    assert model.horizon_days == 90
    hold = model.card["metrics"]["holdout"]
    assert hold["roc_auc"] >= 0.8 and hold["brier"] < hold["brier_base_rate"]
    assert model.card["parity"]["max_abs_diff_onnx_vs_native"] < 1e-5
    assert MODEL.stat().st_size < 5_000_000


def test_predict_and_predict_one_agree(model: ChurnModel, rows: npt.NDArray[np.float32]) -> None:
    p = model.predict(rows)
    assert p.shape == (len(rows),) and p.dtype == np.float64
    assert np.all((p >= 0) & (p <= 1)) and p.std() > 0.01
    for i in range(0, len(rows), 17):
        assert model.predict_one(rows[i].tolist()) == pytest.approx(p[i], abs=1e-7)
    with pytest.raises(ValueError, match="shape"):
        model.predict(rows[:, :5])


def test_top_factor_moves_the_score_as_stated(model: ChurnModel, rows: npt.NDArray[np.float32]) -> None:
    p = model.predict(rows)
    reference = model.card["reference"]["values"]
    checked = 0
    for i in np.argsort(-p)[:40:4].tolist() + np.argsort(p)[:20:4].tolist():
        row = rows[i].tolist()
        factors = model.explain(row, top=3)
        assert len(factors) <= 3
        assert [f.effect_pp for f in factors] == sorted((f.effect_pp for f in factors), reverse=True)
        if not factors:
            continue
        top = factors[0]
        j = FEATURE_NAMES.index(top.feature)
        neutral = list(row)
        neutral[j] = reference[top.feature]
        before, after = model.predict_one(row), model.predict_one(neutral)
        # "raises" means this value pushes the risk up: neutralising it lowers the score.
        assert (before - after > 0) == (top.direction == "raises")
        assert abs(before - after) * 100 == pytest.approx(top.effect_pp, abs=0.06)
        assert top.phrase
        checked += 1
    assert checked >= 8


def test_explanations_read_like_plain_words(model: ChurnModel) -> None:
    assert describe("login_trend", 0.4) == "logins down 60 % in the last 30 days"
    assert describe("late_payments_90d", 2.0) == "2 late payments in 90 days"
    assert describe("nps", 3.0) == "NPS 3/10 (detractor)"
    assert describe("shoe_size", 44.0) == "shoe size = 44"
    reference = [float(model.card["reference"]["values"][n]) for n in FEATURE_NAMES]
    assert model.explain(reference) == []  # nothing differs from the reference: nothing to explain
    row = list(reference)
    row[FEATURE_NAMES.index("login_trend")] = 0.4
    row[FEATURE_NAMES.index("late_payments_90d")] = 2.0
    factors = model.explain(row, top=N_FEATURES)
    assert {f.feature for f in factors} == {"login_trend", "late_payments_90d"}
    assert all(f.direction == "raises" for f in factors)
    assert all(f.phrase == describe(f.feature, row[FEATURE_NAMES.index(f.feature)]) for f in factors)


def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / "churn-vX.onnx"
    shutil.copy(MODEL, dst)
    shutil.copy(MODEL.with_suffix(".json"), dst.with_suffix(".json"))
    return dst


def test_missing_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot read model file"):
        ChurnModel.load(tmp_path / "nope.onnx")
    path = _copy(tmp_path)
    path.with_suffix(".json").unlink()
    with pytest.raises(ModelError, match="cannot read model card"):
        ChurnModel.load(path)


def test_corrupt_files_are_refused(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ModelError, match="does not match its card"):
        ChurnModel.load(path)
    card = json.loads(path.with_suffix(".json").read_text())
    card["onnx"]["sha256"] = hashlib.sha256(
        path.read_bytes()
    ).hexdigest()  # the card vouches for it: the ONNX parser must catch it
    path.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        ChurnModel.load(path)
    del card["onnx"]["sha256"]  # a card that does not name its file is refused before anything is parsed
    path.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match=r"lacks onnx\.sha256"):
        ChurnModel.load(path)
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        ChurnModel.load(path)


def test_a_model_of_other_features_is_refused(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text())
    names = card["feature_names"]
    names[0], names[1] = names[1], names[0]
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelError, match=r"different order from position 0 \('days_since_last_interaction'"):
        ChurnModel.load(path)
    card["feature_names"] = [*FEATURE_NAMES[:-1], "shoe_size"]
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelError, match=r"missing \['expected_activity_ratio'\], unknown \['shoe_size'\]"):
        ChurnModel.load(path)


def test_reload_is_cheap_and_shadow_comparison_works(
    model: ChurnModel, rows: npt.NDArray[np.float32], tmp_path: Path
) -> None:
    import onnx
    from onnx import numpy_helper

    began = time.monotonic()
    again = ChurnModel.load(MODEL)
    assert time.monotonic() - began < 1.0
    same = compare(model, again, rows)
    assert same.max_abs_diff == 0.0 and same.alert_agreement == 1.0 and same.top_decile_overlap == 1.0

    # A candidate that is the same ranking but more alarmed: shift the Platt intercept.
    graph = onnx.load(str(MODEL))
    for init in graph.graph.initializer:
        if init.name == "platt_b":
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + np.float32(1.5), "platt_b"))
    path = tmp_path / "churn-v2.onnx"
    onnx.save(graph, str(path))
    card = dict(model.card, version="churn-v2", onnx={"sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    path.with_suffix(".json").write_text(json.dumps(card))
    candidate = ChurnModel.load(path)
    diff = compare(model, candidate, rows)
    assert diff.candidate_version == "churn-v2" and diff.rows == len(rows)
    assert diff.spearman == pytest.approx(1.0) and diff.top_decile_overlap == 1.0
    assert diff.mean_abs_diff > 0.01 and diff.alerts_candidate >= diff.alerts_live


def test_predict_one_is_safe_from_several_threads(model: ChurnModel, rows: npt.NDArray[np.float32]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    expected = model.predict(rows)
    lists = [r.tolist() for r in rows]

    def score(offset: int) -> list[float]:
        return [model.predict_one(lists[(offset + i) % len(lists)]) for i in range(len(lists))]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(score, [0, 7, 13, 29]))
    for offset, got in zip([0, 7, 13, 29], results, strict=True):
        np.testing.assert_allclose(got, np.roll(expected, -offset), atol=1e-7)


def test_a_model_for_the_other_kind_of_business_is_refused(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    assert ChurnModel.load(path, business="subscription").business == "subscription"
    with pytest.raises(ModelError, match=r"is a subscription model .* configured as transactional"):
        ChurnModel.load(path, business="transactional")
    with pytest.raises(ModelError, match="not one of subscription, transactional"):
        ChurnModel.load(path, business="retail")
    card = json.loads(path.with_suffix(".json").read_text())
    del card["label"]["business"]  # an older card: its label kind says which
    card["label"]["kind"] = "inactivity"
    path.with_suffix(".json").write_text(json.dumps(card))
    assert ChurnModel.load(path, business="transactional").business == "transactional"
    with pytest.raises(ModelError, match="transactional model"):
        ChurnModel.load(path, business="subscription")


async def test_a_process_for_the_other_business_refuses_a_reload_and_keeps_its_model(tmp_path: Path) -> None:
    from router.policy import load_policy
    from router.serving.live import Live
    from router.state.store import StateStore, connect

    settings = Settings()
    store = StateStore(connect(settings.redis.url, cluster=False), settings.redis.prefix, IdentityHasher(b"k" * 16))
    policy = load_policy(settings.policy.path)
    live = Live(None, policy, store, model_path=str(MODEL), policy_path=settings.policy.path, business="transactional")
    with pytest.raises(ModelError, match="configured as transactional"):
        await live.reload_model()  # never connects: the file is refused before anything is announced
    assert live.model is None
    live.business = "subscription"
    _, new = await live.reload_model()
    assert live.model is new and new.business == "subscription"
