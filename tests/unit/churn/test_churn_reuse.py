"""Reusing the consumer's churn score on the request path: only while it is exactly the model's answer."""

from __future__ import annotations

import contextvars
import random
import time
from pathlib import Path

import msgspec
import numpy as np
import onnx
import onnx.helper
import pytest

from router.churn.model import ChurnModel
from router.churn.splits import UnsupportedGraph, split_thresholds
from router.core.features import CLOCK_FEATURES, N_FEATURES, clock_origins, features, windows_change_at
from router.core.identity import IdentityHasher
from router.core.reducer import DAY, Snapshot, fold
from router.devstack.demo import generate_history, history_window
from router.ops import metrics
from router.policy import load_policy
from router.serving.decisions import DecisionService, Resolved
from router.serving.live import Live
from router.settings import Settings
from router.state.audit import AuditWriter
from router.state.records import CustomerRecord, Scores
from router.state.store import StateStore, connect
from schemas.api import ClassifyRequest, CustomerRef

MODEL = Path(Settings().model.path)


@pytest.fixture(scope="module")
def model() -> ChurnModel:
    return ChurnModel.load(MODEL)


@pytest.fixture(scope="module")
def histories() -> list[tuple[Snapshot, int]]:
    """(snapshot, as_of) pairs: customers folded up to various points of an 8-month history."""
    start, end = history_window(8)
    hasher = IdentityHasher(b"test-key-0123456789abcdef")
    snaps: dict[str, Snapshot] = {}
    out: list[tuple[Snapshot, int]] = []
    rnd = random.Random(5)
    for e in generate_history(300, start, end, seed=11):
        snap, _ = fold(snaps.get(e.customer_id), e, lateness_s=86_400, hasher=hasher)
        snaps[e.customer_id] = snap
        if rnd.random() < 0.02:  # scored as the consumer would right after this event, or hours later
            t = int(e.occurred_at.timestamp()) + rnd.choice((0, 0, 37, 3_600, 5 * DAY // 3))
            out.append((_copy(snap), t))
    out += [(s, int(end.timestamp())) for s in snaps.values()]
    return out


def _copy(snap: Snapshot) -> Snapshot:
    return msgspec.msgpack.decode(msgspec.msgpack.encode(snap), type=Snapshot)


def test_thresholds_are_read_as_the_onnx_package_reads_them() -> None:
    blob = MODEL.read_bytes()
    ours = split_thresholds(blob, N_FEATURES)
    node = next(n for n in onnx.load_from_string(blob).graph.node if n.op_type == "TreeEnsembleRegressor")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    ref: list[list[float]] = [[] for _ in range(N_FEATURES)]
    for f, v, mode in zip(attrs["nodes_featureids"], attrs["nodes_values"], attrs["nodes_modes"], strict=True):
        if mode != b"LEAF":
            ref[f].append(v)
    for f in range(N_FEATURES):
        assert np.array_equal(np.unique(np.float32(ref[f])).astype(np.float64), ours[f]), f
    assert all(len(ours[f]) > 10 for f in CLOCK_FEATURES)


def test_a_graph_that_is_not_a_plain_tree_ensemble_is_never_reused(tmp_path: Path) -> None:
    blob = MODEL.read_bytes()
    m = onnx.load_from_string(blob)
    # Scale the input before the trees: thresholds no longer say where the output changes.
    scale = onnx.helper.make_tensor("scale", onnx.TensorProto.FLOAT, [1], [2.0])
    m.graph.initializer.append(scale)
    trees = next(n for n in m.graph.node if n.op_type == "TreeEnsembleRegressor")
    m.graph.node.insert(0, onnx.helper.make_node("Mul", [trees.input[0], "scale"], ["scaled_features"]))
    trees.input[0] = "scaled_features"
    with pytest.raises(UnsupportedGraph, match="Mul"):
        split_thresholds(m.SerializeToString(), N_FEATURES)
    with pytest.raises(UnsupportedGraph):
        split_thresholds(blob[: len(blob) // 2], N_FEATURES)


def test_origins_mirror_the_clock_features(histories: list[tuple[Snapshot, int]]) -> None:
    changes = moved = 0
    for snap, as_of in histories[::7]:
        row = features(snap, as_of)
        for f, (origin, rate) in zip(CLOCK_FEATURES, clock_origins(snap), strict=True):
            if origin is None:  # constant until the next event
                assert row[f] == features(snap, as_of + 40 * DAY)[f]
                continue
            assert row[f] == pytest.approx(max(0.0, (as_of - origin) / DAY) * rate, rel=1e-12, abs=1e-9)
        change = windows_change_at(snap, as_of)
        assert change > as_of and change % DAY == 0
        if change < 1 << 40:  # the windows are the same until then and differ from then on
            same, moved_row = features(snap, change - 1), features(snap, change)
            others = [i for i in range(N_FEATURES) if i not in CLOCK_FEATURES]
            assert [same[i] for i in others] == [features(snap, as_of)[i] for i in others]
            changes += 1
            moved += [moved_row[i] for i in others] != [same[i] for i in others]
    # A bucket can cross a window edge without moving a feature (nothing it counts in that window).
    assert changes > 20 and moved > changes // 2, (moved, changes)


def test_a_score_is_exactly_the_models_answer_until_stable_until(
    model: ChurnModel, histories: list[tuple[Snapshot, int]]
) -> None:
    """Bit for bit at the first, last and random seconds of the interval; it changes soon after."""
    rnd = random.Random(3)
    spans: list[int] = []
    changed_after = bounded_by_split = 0
    for snap, as_of in histories:
        row = features(snap, as_of)
        churn = model.predict(np.asarray([row], np.float32))[0]  # batched, as the consumer scores
        until = model.stable_until(snap, row, as_of)
        assert until >= as_of
        spans.append(until - as_of)
        if until == as_of:
            continue
        for t in {as_of, until - 1, (as_of + until) // 2, *(rnd.randrange(as_of, until) for _ in range(3))}:
            assert model.predict_one(features(snap, t)) == churn, (snap.customer_id, as_of, t, until)
        if until < windows_change_at(snap, as_of) and all(o is None or o <= as_of for o, _ in clock_origins(snap)):
            bounded_by_split += 1  # the bound is a split threshold: the answer moves within seconds after it
            later = [model.predict_one(features(snap, until + s)) for s in (0, 2, 5, 10, 30)]
            changed_after += any(p != churn for p in later)
    spans.sort()
    assert len(spans) > 400
    # Useful, not only safe: nearly every score stays exact for a while (most of these were scored
    # right after an event: ten minutes then, until days since it reaches the model's first split),
    # and a bound set by a split is not needlessly early: the answer differs within 30 s after it in most
    # cases (not all: the bound takes every tree's thresholds, also of nodes this row's path does not visit;
    # with five clock features since the lifetime ones, 557 of 1,228 here, hence 40 %).
    assert sum(s > 0 for s in spans) >= 0.9 * len(spans) and spans[len(spans) // 2] >= 600, spans[len(spans) // 2]
    assert bounded_by_split > 50 and changed_after >= 0.4 * bounded_by_split, (changed_after, bounded_by_split)


def test_a_clock_feature_before_its_origin_bounds_the_interval_there(model: ChurnModel) -> None:
    future = 1_800_000_000
    snap = Snapshot(customer_id="c-1", first_seen=future - 10 * DAY, last_interaction_at=future)
    as_of = future - DAY  # an event stamped ahead of the clock: days since it stay 0 until then
    assert model.stable_until(snap, features(snap, as_of), as_of) <= future


def test_the_batched_bound_is_the_per_customer_one(model: ChurnModel, histories: list[tuple[Snapshot, int]]) -> None:
    """``stable_until_many`` (the consumer's, once per batch) returns exactly ``stable_until`` per customer:
    right after events, hours and days later, before a clock feature's origin, and for empty snapshots."""
    rnd = random.Random(9)
    future = 1_800_000_000
    cases = [(s, t + rnd.choice((0, 1, 59, 3_600, DAY - 1, 7 * DAY, 45 * DAY, 120 * DAY))) for s, t in histories]
    cases += [
        (Snapshot(customer_id="c-1", first_seen=future - 10 * DAY, last_interaction_at=future), future - DAY),
        (Snapshot(customer_id="c-2"), future),
        (Snapshot(customer_id="c-3", first_seen=future), future - 5),
    ]
    snaps, as_of = [s for s, _ in cases], [t for _, t in cases]
    feats = [features(s, t) for s, t in cases]
    batched = model.stable_until_many(snaps, np.asarray(feats, dtype=np.float64), as_of)
    one = [model.stable_until(s, row, t) for s, row, t in zip(snaps, feats, as_of, strict=True)]
    assert batched == one
    assert all(type(u) is int for u in batched)
    assert len(set(u - t for u, t in zip(one, as_of, strict=True))) > 100  # the cases bound it in many ways
    unsplit = ChurnModel.load(MODEL)
    unsplit.model_id = ""  # splits unknown: never reusable, in both
    assert unsplit.stable_until_many(snaps[:5], np.asarray(feats[:5]), as_of[:5]) == as_of[:5]


def _service(model: ChurnModel) -> DecisionService:
    settings = Settings()
    hasher = IdentityHasher.from_settings(settings.identity)
    store = StateStore(connect(settings.redis.url, cluster=False), settings.redis.prefix, hasher)  # never connected
    policy = load_policy(settings.policy.path)
    live = Live(model, policy, store, model_path=settings.model.path, policy_path=settings.policy.path)
    return DecisionService(live, store, AuditWriter(store), settings.redis, settings.model)


def _counts() -> tuple[float, float]:
    return (
        metrics.REQUEST_CHURN.labels("reused")._value.get(),
        metrics.REQUEST_CHURN.labels("computed")._value.get(),
    )


def test_decide_reuses_a_valid_score_of_the_same_model_and_computes_otherwise(
    model: ChurnModel, histories: list[tuple[Snapshot, int]]
) -> None:
    service = _service(model)
    now = int(time.time())
    snap = next(s for s, _ in histories if s.subscription == "active")
    row = features(snap, now)
    exact = model.predict_one(row)
    req = ClassifyRequest(customer=CustomerRef(customer_id=snap.customer_id), channel="email", category="billing")

    def decide(scores: Scores) -> tuple[float | None, float, float]:
        before = _counts()
        rec = CustomerRecord(snapshot=snap, marks={}, scores=scores, raw_marks=None)
        # In a context of its own, as a request runs: decide() binds the decision id for later log lines.
        d = contextvars.copy_context().run(service.decide, req, Resolved(snap.customer_id, "h", rec, None))
        after = _counts()
        return d.scores.churn_risk, after[0] - before[0], after[1] - before[1]

    # A stored score is used only when it names this model and now is inside its interval. To see
    # which path ran, the stored score is deliberately not the model's answer.
    marker = 0.4321 if abs(exact - 0.4321) > 0.01 else 0.2345
    valid = Scores(churn=marker, model_id=model.model_id, as_of=now - 60, valid_until=now + 60)
    assert decide(valid) == (round(marker * 100, 1), 1, 0)
    for stale in (
        Scores(churn=marker, model_id=model.model_id, as_of=now - 120, valid_until=now),  # interval over
        Scores(churn=marker, model_id=model.model_id, as_of=now + 5, valid_until=now + 60),  # scored ahead
        Scores(churn=marker, model_id="0123456789ab", as_of=now - 60, valid_until=now + 60),  # other model
        Scores(churn=marker, as_of=now - 60, valid_until=now + 60),  # no model named (older record)
    ):
        assert decide(stale) == (round(exact * 100, 1), 0, 1), stale
    # What the consumer stores for this snapshot gives the model's own answer, without running it.
    stored = Scores(churn=exact, model_id=model.model_id, as_of=now, valid_until=model.stable_until(snap, row, now))
    if stored.valid_until > now:
        assert decide(stored) == (round(exact * 100, 1), 1, 0)
