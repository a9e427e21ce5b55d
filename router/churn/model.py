"""The churn model as the service uses it: load once, score single rows fast, explain.

``ChurnModel.load(path)`` reads ``churn-vN.onnx`` and its model card ``churn-vN.json``,
refuses files that do not belong together (the card must name the ONNX file's SHA-256) or to
this code's feature list, and keeps one
ONNX Runtime session (single-threaded, sequential: the service parallelises across
requests, not inside one). :meth:`ChurnModel.predict_one` is the request hot path; it
reuses a pre-allocated input buffer per thread, so one instance serves the event loop and
worker threads alike.

A score is a step function of the clock: between events only tenure and days since the last
interaction move (and the windows at day boundaries), and the trees' output changes only
where one of them crosses a split threshold. :meth:`ChurnModel.stable_until` says until when
a score computed now stays exactly what the model would return, so the consumer's score can
be served without running the model again (``model_id`` names the exact model file).

Explanations are faithful to the model: each feature is set back to the population
reference stored in the card (the training median) and the change of the *model's*
probability is measured, all variants scored in one batched call.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import math
import os
import struct
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from router.churn.splits import UnsupportedGraph, split_thresholds
from router.core.features import (
    CLOCK_FEATURES,
    FEATURE_NAMES,
    N_FEATURES,
    clock_origins,
    clock_origins_many,
    windows_change_at,
    windows_change_at_many,
)
from router.core.reducer import DAY, Snapshot

__all__ = ["BUSINESSES", "ChurnModel", "Comparison", "Factor", "ModelError", "business_of", "compare"]

FloatArray = npt.NDArray[np.float64]
log = logging.getLogger("router.churn.model")
_F32 = struct.Struct("<f")  # pack + unpack: a float rounded to float32 as ONNX Runtime sees it


class ModelError(Exception):
    """The model or its card is missing, corrupt, or does not match this code."""


class Factor(msgspec.Struct, frozen=True, kw_only=True):
    """One reason behind a churn score, in words an agent understands."""

    feature: str
    """Feature name (see ``router.core.features.FEATURE_NAMES``)."""
    direction: Literal["raises", "lowers"]
    """Whether the customer's value of this feature raises or lowers the churn risk."""
    effect_pp: float
    """Probability points (0-100 scale) the score moves when this feature is set to the population reference."""
    phrase: str
    """Plain words, e.g. "logins down 60 % in the last 30 days"."""


class Comparison(msgspec.Struct, frozen=True, kw_only=True):
    """How far a candidate (shadow) model agrees with the live one on the same rows."""

    live_version: str
    candidate_version: str
    rows: int
    mean_abs_diff: float
    max_abs_diff: float
    pearson: float
    spearman: float
    alert_agreement: float
    """Share of rows on the same side of the alert threshold in both models."""
    alerts_live: int
    alerts_candidate: int
    top_decile_overlap: float
    """Share of the live model's riskiest 10 % that the candidate also puts in its riskiest 10 %."""


class ChurnModel:
    """A loaded churn model (ONNX session + model card). Build with :meth:`load`."""

    __slots__ = (
        "_clock_arrays",
        "_clock_splits",
        "_input",
        "_local",
        "_outputs",
        "_ref",
        "_session",
        "card",
        "model_id",
        "path",
        "sha256",
        "version",
    )

    def __init__(self, session: Any, card: dict[str, Any], path: Path) -> None:
        self._session = session
        self.card = card
        self.path = path
        self.version: str = str(card["version"])
        self.model_id = ""
        """First 12 hex digits of the ONNX file's SHA-256 ("" when its scores cannot be reused)."""
        self.sha256 = ""
        """SHA-256 of the ONNX file (hex), as its card names it: what a reload announces to other processes."""
        self._clock_splits: list[tuple[list[float], list[float]]] = []
        """Per clock feature: its split thresholds, and for each the largest float32 below it (sorted)."""
        self._clock_arrays: list[tuple[FloatArray, FloatArray]] = []
        """The same as float64 arrays, for :meth:`stable_until_many`."""
        self._input: str = session.get_inputs()[0].name
        self._outputs: list[str] = [session.get_outputs()[0].name]
        self._local = threading.local()
        values = card["reference"]["values"]
        self._ref = np.asarray([float(values[name]) for name in FEATURE_NAMES], dtype=np.float32)

    @property
    def horizon_days(self) -> int:
        """Horizon (days) the probability refers to."""
        return int(self.card.get("horizon_days", 90))

    @property
    def business(self) -> str:
        """``subscription`` (label: cancelled) or ``transactional`` (label: no purchase within the horizon)."""
        return business_of(self.card)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, business: str | None = None) -> ChurnModel:
        """Load ``path`` (.onnx) and the card beside it (.json); raise :class:`ModelError` if unusable.

        ``business`` (``ROUTER_MODEL_BUSINESS``): the card's ``label.business`` must be this one, so a
        subscription business is never scored with a "no purchase" model or the other way round.
        Cheap enough (tens of milliseconds) to call from a reload endpoint; the caller swaps
        the returned instance in only once it loaded.
        """
        onnx_path = Path(path)
        card_path = onnx_path.with_suffix(".json")
        try:
            blob = onnx_path.read_bytes()
        except OSError as exc:
            raise ModelError(f"cannot read model file {onnx_path}: {exc.strerror or exc}") from None
        try:
            card_raw = card_path.read_bytes()
        except OSError as exc:
            raise ModelError(f"cannot read model card {card_path}: {exc.strerror or exc}") from None
        try:
            card = msgspec.json.decode(card_raw)
        except msgspec.DecodeError as exc:
            raise ModelError(f"model card {card_path} is not valid JSON: {exc}") from None
        if not isinstance(card, dict):
            raise ModelError(f"model card {card_path} is not a JSON object")
        _check_card(card, card_path)
        if business is not None:
            if business not in BUSINESSES:
                raise ModelError(f"business {business!r} is not one of {', '.join(BUSINESSES)} (ROUTER_MODEL_BUSINESS)")
            if business_of(card) != business:
                raise ModelError(
                    f"model card {card_path} is a {business_of(card)} model (label {card.get('label', {}).get('kind')!r}), "
                    f"but the business is configured as {business} (ROUTER_MODEL_BUSINESS)"
                )
        digest = hashlib.sha256(blob).hexdigest()
        onnx_meta = card.get("onnx")
        expected = onnx_meta.get("sha256") if isinstance(onnx_meta, dict) else None
        if not isinstance(expected, str) or not expected:
            # Without it nothing says this card describes this file: its metrics, reference values and
            # feature list could belong to another model.
            raise ModelError(f"model card {card_path} lacks onnx.sha256 (the SHA-256 of {onnx_path.name})")
        if expected != digest:
            raise ModelError(
                f"{onnx_path} does not match its card {card_path}: sha256 {digest[:12]}.. != {str(expected)[:12]}.."
            )
        session = _session(blob, onnx_path)
        model = cls(session, card, onnx_path)
        model.sha256 = digest
        model._read_splits(blob, digest)
        probe = model.predict(model._ref.reshape(1, -1))
        if probe.shape != (1,) or not 0.0 <= float(probe[0]) <= 1.0:
            raise ModelError(f"{onnx_path} does not return one probability per row (got {probe!r})")
        return model

    def _read_splits(self, blob: bytes, digest: str) -> None:
        """Make scores reusable (:meth:`stable_until`) if the graph is a plain tree ensemble."""
        try:
            splits = split_thresholds(blob, N_FEATURES)
        except UnsupportedGraph as exc:
            log.warning("%s: scores will not be reused (%s)", self.path, exc)
            return
        self._clock_splits = [
            (splits[f].tolist(), np.nextafter(splits[f].astype(np.float32), np.float32(-np.inf)).tolist())
            for f in CLOCK_FEATURES
        ]
        self._clock_arrays = [
            (np.asarray(splits, dtype=np.float64), np.asarray(below, dtype=np.float64))
            for splits, below in self._clock_splits
        ]
        self.model_id = digest[:12]

    def predict(self, x: npt.ArrayLike) -> FloatArray:
        """Churn probabilities of rows ``x`` (shape [n, N_FEATURES]), one batched call."""
        arr = np.ascontiguousarray(x, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[1] != N_FEATURES:
            raise ValueError(f"expected shape [n, {N_FEATURES}], got {list(arr.shape)}")
        out = self._session.run(self._outputs, {self._input: arr})[0]
        return np.asarray(out, dtype=np.float64).reshape(-1)

    def predict_one(self, row: Sequence[float]) -> float:
        """Churn probability of one feature row (``router.core.features.features`` output)."""
        try:
            buf, out, binding = self._local.one
        except AttributeError:  # first call on this thread
            buf, out, binding = self._local.one = self._bind_one()
        buf[0] = row
        # Bound input and output buffers: no feed dict to check and no output array to allocate per call.
        self._session.run_with_iobinding(binding)
        return float(out[0])

    def stable_until(self, snap: Snapshot, row: Sequence[float], as_of: int) -> int:
        """Epoch second before which the score of ``row`` (``features(snap, as_of)``) stays exact.

        Until then, with the same snapshot, ``predict_one(features(snap, t))`` returns the very
        same float for every second ``as_of <= t < stable_until``: no window changes (see
        ``router.core.features.windows_change_at``) and no clock feature reaches the next float32
        value at which a tree compares it differently (the bound ends a second before). ``as_of``
        (never reusable) when the model's splits are unknown.
        """
        if not self.model_id:
            return as_of
        until = windows_change_at(snap, as_of)
        for (splits, below), f, (origin, rate) in zip(
            self._clock_splits, CLOCK_FEATURES, clock_origins(snap), strict=True
        ):
            if origin is None or rate <= 0.0:  # stays where it is
                continue
            if as_of < origin:  # held at 0 until its origin, growing from then on: stop there
                until = min(until, origin)
                continue
            x = row[f]
            k = bisect.bisect_left(
                splits, _F32.unpack(_F32.pack(x))[0]
            )  # first threshold the float32 value is not above
            if k < len(splits):
                # Up to the largest float32 below that threshold a value still compares the same way in every tree.
                until = min(until, as_of + max(0, math.floor((below[k] - x) * DAY / rate) - 1))
        return until

    def stable_until_many(self, snaps: Sequence[Snapshot], rows: FloatArray, as_of: Sequence[int]) -> list[int]:
        """:meth:`stable_until` of many customers at once: ``rows`` their features as float64, shape
        [n, N_FEATURES] (unrounded: ``features(snaps[i], as_of[i])``). The same integers, one numpy pass per
        clock feature instead of a Python loop per customer (the consumer scores thousands per batch)."""
        if not self.model_id:
            return list(as_of)
        t = np.asarray(as_of, dtype=np.int64)
        until = windows_change_at_many(snaps, as_of)
        origins, rates = clock_origins_many(snaps)  # origin 0 and rate 0: the feature stays where it is
        x64 = rows[:, CLOCK_FEATURES]
        x32 = x64.astype(np.float32).astype(np.float64)  # as ONNX Runtime sees them
        for j, (splits, below) in enumerate(self._clock_arrays):
            rate, origin = rates[:, j], origins[:, j]
            growing = rate > 0.0
            waiting = growing & (t < origin)  # held at 0 until its origin: stop there
            until = np.where(waiting, np.minimum(until, origin), until)
            if not len(splits):
                continue
            k = np.searchsorted(splits, x32[:, j], side="left")  # bisect_left
            hit = growing & ~waiting & (k < len(splits))
            if not hit.any():
                continue
            b = below[np.minimum(k, len(splits) - 1)]
            steps = np.floor((b - x64[:, j]) * DAY / np.where(growing, rate, 1.0))
            # Integers in float64, converted exactly; anything this far ahead lies past every window bound.
            steps = np.clip(steps, 0.0, 2.0**62).astype(np.int64) - 1
            until = np.where(hit, np.minimum(until, t + np.maximum(0, steps)), until)
        return [int(u) for u in until.tolist()]

    def _bind_one(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], Any]:
        import onnxruntime as ort

        buf = np.zeros((1, N_FEATURES), dtype=np.float32)
        out = np.zeros((1,), dtype=np.float32)
        binding = self._session.io_binding()
        binding.bind_ortvalue_input(self._input, ort.OrtValue.ortvalue_from_numpy(buf))
        binding.bind_output(self._outputs[0], "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
        return buf, out, binding  # ``out`` and ``buf`` must outlive the binding: kept together

    def explain(self, row: Sequence[float], top: int = 3) -> list[Factor]:
        """The ``top`` features that move this customer's score most, largest first.

        Effect of a feature = score(row) - score(row with that feature at the reference).
        Features equal to the reference, or whose effect is below 0.1 points, are left out.
        """
        buf = np.empty((N_FEATURES + 1, N_FEATURES), dtype=np.float32)
        buf[:] = row
        ref = self._ref
        idx = np.arange(N_FEATURES)
        buf[idx + 1, idx] = ref
        scores = np.asarray(self._session.run(self._outputs, {self._input: buf})[0], dtype=np.float64).reshape(-1)
        effects = scores[0] - scores[1:]
        order = np.argsort(-np.abs(effects), kind="stable")
        factors: list[Factor] = []
        values = buf[0]
        for i in order[: max(0, top)]:
            effect = float(effects[i]) * 100.0
            if abs(effect) < 0.1:
                break
            name = FEATURE_NAMES[i]
            factors.append(
                Factor(
                    feature=name,
                    direction="raises" if effect > 0 else "lowers",
                    effect_pp=round(abs(effect), 1),
                    phrase=describe(name, float(values[i])),
                )
            )
        return factors


BUSINESSES = ("subscription", "transactional")
_BUSINESS_OF_KIND = {"cancel": "subscription", "inactivity": "transactional"}


def business_of(card: dict[str, Any]) -> str:
    """The business a card's label is for: ``label.business``, or for older cards the one its label kind implies."""
    label = card.get("label")
    if not isinstance(label, dict):
        return "subscription"
    business = label.get("business")
    if isinstance(business, str):
        return business
    return _BUSINESS_OF_KIND.get(str(label.get("kind")), "subscription")


def _check_card(card: dict[str, Any], card_path: Path) -> None:
    for key in ("version", "feature_names", "reference"):
        if key not in card:
            raise ModelError(f"model card {card_path} lacks '{key}'")
    names = card["feature_names"]
    if not isinstance(names, list) or names != list(FEATURE_NAMES):
        got = list(names) if isinstance(names, list) else []
        missing = [n for n in FEATURE_NAMES if n not in got]
        extra = [n for n in got if n not in FEATURE_NAMES]
        if missing or extra:
            detail = f"missing {missing}, unknown {extra}"
        else:
            first = next(i for i, (a, b) in enumerate(zip(got, FEATURE_NAMES, strict=True)) if a != b)
            detail = f"same names, different order from position {first} ({got[first]!r} vs {FEATURE_NAMES[first]!r})"
        raise ModelError(
            f"model card {card_path} was trained on other features than router.core.features.FEATURE_NAMES: {detail}; "
            "retrain with `router train`"
        )
    values = card["reference"].get("values") if isinstance(card["reference"], dict) else None
    if not isinstance(values, dict) or any(not isinstance(values.get(n), (int, float)) for n in FEATURE_NAMES):
        raise ModelError(f"model card {card_path} lacks a numeric reference value for every feature")


def _session(blob: bytes, path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(blob, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for corrupt graphs
        raise ModelError(f"{path} is not a loadable ONNX model: {exc}") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or list(inputs[0].shape)[1:] != [N_FEATURES] or inputs[0].type != "tensor(float)":
        raise ModelError(
            f"{path} expects input {[(i.name, i.shape, i.type) for i in inputs]}, "
            f"not one float tensor [n, {N_FEATURES}]"
        )
    if not outputs:
        raise ModelError(f"{path} has no outputs")
    return session


# --- plain words -----------------------------------------------------------------------


def _n(v: float, one: str, many: str | None = None) -> str:
    k = round(v)
    return f"{k:,} {one if k == 1 else many or one + 's'}"


def _trend(v: float) -> str:
    change = (v - 1.0) * 100.0
    if abs(change) < 10:
        return "logins steady over the last 30 days"
    return f"logins {'down' if change < 0 else 'up'} {abs(change):.0f} % in the last 30 days"


def _years(days: float) -> str:
    return f"customer for {days / 365.25:.1f} years" if days >= 365 else f"customer for {days:.0f} days"


def _nps(v: float) -> str:
    if v < 0:
        return "no NPS answer yet"
    kind = "promoter" if v >= 9 else "passive" if v >= 7 else "detractor"
    return f"NPS {v:.0f}/10 ({kind})"


def _sentiment(v: float) -> str:
    mood = "negative" if v < -0.25 else "positive" if v > 0.25 else "neutral"
    return f"{mood} tone in recent contacts ({v:+.2f})"


_PHRASES: dict[str, Callable[[float], str]] = {
    "tenure_days": _years,
    "days_since_last_interaction": lambda v: f"no contact for {v:.0f} days" if v >= 2 else "in contact recently",
    "orders_30d": lambda v: _n(v, "order") + " in the last 30 days",
    "orders_90d": lambda v: _n(v, "order") + " in the last 90 days",
    "revenue_90d": lambda v: f"revenue {v:,.0f} in the last 90 days",
    "avg_order_value": lambda v: f"average order value {v:,.0f}",
    "logins_30d": lambda v: _n(v, "login") + " in the last 30 days",
    "logins_prev_30d_avg": lambda v: f"{v:,.0f} logins a month in the two months before",
    "login_trend": _trend,
    "features_used_30d": lambda v: _n(v, "product feature use") + " in the last 30 days",
    "late_payments_90d": lambda v: (_n(v, "late payment") if v else "no late payments") + " in 90 days",
    "late_payment_ratio": lambda v: f"{v * 100:.0f} % of payments late",
    "tickets_30d": lambda v: _n(v, "ticket") + " in the last 30 days",
    "severe_tickets_90d": lambda v: _n(v, "high/urgent ticket") + " in 90 days",
    "open_tickets": lambda v: _n(v, "ticket") + " still open",
    "unresolved_tickets_90d": lambda v: _n(v, "ticket") + " closed unresolved in 90 days",
    "sentiment_90d": _sentiment,
    "nps": _nps,
    "mrr": lambda v: f"monthly recurring revenue {v:,.0f}",
    "mrr_change_90d": lambda v: (
        f"MRR {'down' if v < 0 else 'up'} {abs(v):,.0f} in 90 days" if v else "MRR unchanged in 90 days"
    ),
    "downgrades_90d": lambda v: (_n(v, "downgrade") if v else "no downgrades") + " in 90 days",
    "upgrades_90d": lambda v: (
        (_n(v, "upgrade or add-on", "upgrades or add-ons") if v else "no upgrades") + " in 90 days"
    ),
    "subscription_active": lambda v: "active subscription" if v >= 0.5 else "no active subscription",
    "csat_avg": lambda v: f"average CSAT {v:.1f}/5" if v > 0 else "no CSAT ratings",
    "log_company_size": lambda v: f"company of about {math.expm1(v):,.0f} people" if v > 0 else "company size unknown",
    "orders_total": lambda v: _n(v, "order") + " in total",
    "spend_total": lambda v: f"spent {v:,.0f} in total",
    "days_since_last_order": lambda v: f"last order {v:.0f} days ago" if v >= 1 else "ordered today or never",
    "order_age_days": lambda v: f"first order {v:.0f} days ago" if v > 0 else "no orders yet",
    "order_recency_days": lambda v: f"ordered over a span of {v:.0f} days",
    "mean_order_gap_days": lambda v: f"orders every {v:.0f} days on average" if v > 0 else "no repeat orders",
    "last_order_gap_days": lambda v: f"{v:.0f} days between the last two orders" if v > 0 else "no repeat orders",
    "expected_activity_ratio": lambda v: (
        f"silent {v:.1f}x the usual gap between orders" if v > 0 else "no usual gap between orders yet"
    ),
}


def describe(feature: str, value: float) -> str:
    """Plain-words statement of one feature value (falls back to ``name = value``)."""
    phrase = _PHRASES.get(feature)
    return phrase(value) if phrase else f"{feature.replace('_', ' ')} = {value:g}"


# --- shadow comparison -----------------------------------------------------------------


def compare(
    live: ChurnModel, candidate: ChurnModel, rows: npt.ArrayLike, *, alert_threshold: float = 0.70
) -> Comparison:
    """Score the same rows with both models and summarise how much they agree."""
    p = live.predict(rows)
    q = candidate.predict(rows)
    n = len(p)
    if n == 0:
        raise ValueError("no rows to compare")
    diff = np.abs(p - q)

    def corr(a: FloatArray, b: FloatArray) -> float:
        if n < 2 or float(a.std()) == 0.0 or float(b.std()) == 0.0:
            return float("nan")
        return float(np.corrcoef(a, b)[0, 1])

    def ranks(a: FloatArray) -> FloatArray:
        r = np.empty(n, dtype=np.float64)
        r[np.argsort(a, kind="stable")] = np.arange(n, dtype=np.float64)
        return r

    k = max(1, n // 10)
    top_p = set(np.argsort(-p, kind="stable")[:k].tolist())
    top_q = set(np.argsort(-q, kind="stable")[:k].tolist())
    return Comparison(
        live_version=live.version,
        candidate_version=candidate.version,
        rows=n,
        mean_abs_diff=float(diff.mean()),
        max_abs_diff=float(diff.max()),
        pearson=corr(p, q),
        spearman=corr(ranks(p), ranks(q)),
        alert_agreement=float(np.mean((p >= alert_threshold) == (q >= alert_threshold))),
        alerts_live=int((p >= alert_threshold).sum()),
        alerts_candidate=int((q >= alert_threshold).sum()),
        top_decile_overlap=len(top_p & top_q) / k,
    )
