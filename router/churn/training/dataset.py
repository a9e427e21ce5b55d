"""Point-in-time training rows from an event log, through the serving code path.

Each customer's events are replayed in file order through :func:`router.core.reducer.fold`
(the reducer the Kafka consumer runs). At every cutoff the snapshot holds exactly the
events with ``occurred_at <= cutoff`` and :func:`router.core.features.features` turns it into
the row, so a training row is what the service would have computed at that moment.
The label looks only at events after the cutoff.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import msgspec
import numpy as np
import numpy.typing as npt

from router.core.features import FEATURE_NAMES, features
from router.core.identity import IdentityHasher
from router.core.reducer import Snapshot, fold
from schemas.events import (
    EVENT_TYPES,
    CustomerEvent,
    CustomerProfile,
    ErasureRequested,
    EventBase,
    Outcome,
    Payment,
    SubscriptionChanged,
    Usage,
    event_decoder,
)

__all__ = [
    "ACTIVITY_TYPES",
    "TRAINING_HASH_KEY",
    "Dataset",
    "LabelKind",
    "build_dataset",
    "label_definition",
    "read_events",
]

TRAINING_HASH_KEY = b"training-only-key-0123456789"
"""Identity hashes never reach a feature; a fixed key keeps training runs reproducible."""

LabelKind = Literal["cancel", "inactivity"]

ACTIVITY_TYPES: frozenset[str] = frozenset(
    ("order_placed", "payment", "subscription_changed", "ticket_opened", "ticket_resolved", "usage", "nps_response")
)
"""Event types that can count as activity for the inactivity label (``payment`` only when not ``due``)."""

GROUND_TRUTH: dict[str, int] = {"churned": 1, "renewed": 0}
"""Outcome events that are labels: the latest of them in a row's horizon overrides the inferred label."""

_GROUND_TRUTH_TEXT = (
    "; where an outcome event 'churned' or 'renewed' occurs in the horizon, the latest of them is the label "
    "instead (churned 1, renewed 0; a renewal followed by a cancellation in the horizon does not count)"
)

NO_CANCEL_EVENTS = "no subscription_changed cancel events: use --label inactivity"


def label_definition(kind: LabelKind, horizon_days: int, activity: frozenset[str] | None = None) -> str:
    """The label in words, for the model card."""
    if kind == "cancel":
        return (
            f"1 if the customer has a subscription_changed event with change='cancel' and occurred_at in "
            f"(cutoff, cutoff + {horizon_days}d]; customers whose subscription is already cancelled or whose "
            f"latest outcome is 'churned' at the cutoff are excluded" + _GROUND_TRUTH_TEXT
        )
    what = (
        "any event except customer_profile, outcome, invoice-due payments, cancellations and usage "
        "reports with no logins"
        if activity is None or activity >= ACTIVITY_TYPES
        else "events of type "
        + ", ".join(sorted(activity))
        + " (invoice-due payments, cancellations and empty usage reports excepted)"
    )
    return (
        f"1 if the customer has no activity ({what}) in (cutoff, cutoff + {horizon_days}d]; every customer with "
        f"such activity at or before the cutoff is a row, dormant ones included; customers whose subscription "
        f"is already cancelled or latest outcome is 'churned' at the cutoff are excluded" + _GROUND_TRUTH_TEXT
    )


def read_events(path: str | Path) -> Iterator[CustomerEvent]:
    """Decode a JSON Lines event log with the wire decoder (blank lines are skipped)."""
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield event_decoder.decode(line)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                raise ValueError(f"{path}:{lineno}: invalid event: {exc}") from None


@dataclass
class Dataset:
    """Feature rows (``FEATURE_NAMES`` order) with labels, one per (customer, cutoff)."""

    X: npt.NDArray[np.float64]
    y: npt.NDArray[np.int8]
    customer_ids: list[str]
    cutoff_index: npt.NDArray[np.int16]
    """Position of each row's cutoff in :attr:`cutoffs`."""
    cutoffs: list[datetime]
    first_event: datetime | None
    last_event: datetime | None
    events: int
    skipped: dict[str, int] = field(default_factory=dict)
    """Rows left out, by reason (already churned, erased, out-of-order around a cutoff)."""
    label_source: npt.NDArray[np.int8] | None = None
    """Per row: 0 label inferred (cancellation / activity), 1 an outcome event confirmed it, 2 an outcome
    event overrode it (``churned`` -> 1, ``renewed`` -> 0: ground truth where present)."""

    def outcome_labels(self) -> dict[str, int]:
        """Rows labelled by a ``churned`` / ``renewed`` outcome, and how many of them the outcome changed."""
        if self.label_source is None:
            return {"churned": 0, "renewed": 0, "changed": 0}
        by_outcome = self.label_source > 0
        return {
            "churned": int((by_outcome & (self.y == 1)).sum()),
            "renewed": int((by_outcome & (self.y == 0)).sum()),
            "changed": int((self.label_source == 2).sum()),
        }

    def select(self, cutoff_positions: Sequence[int]) -> Dataset:
        """The rows of the given cutoffs only."""
        mask = np.isin(self.cutoff_index, np.asarray(cutoff_positions, dtype=np.int16))
        return Dataset(
            X=self.X[mask],
            y=self.y[mask],
            customer_ids=[c for c, m in zip(self.customer_ids, mask, strict=True) if m],
            cutoff_index=self.cutoff_index[mask],
            cutoffs=self.cutoffs,
            first_event=self.first_event,
            last_event=self.last_event,
            events=self.events,
            skipped=dict(self.skipped),
            label_source=self.label_source[mask] if self.label_source is not None else None,
        )


class _Replay:
    __slots__ = ("active", "bad", "cancelled", "erased", "last_active", "last_t", "next_k", "outcome", "rows", "snap")

    def __init__(self, n_cutoffs: int) -> None:
        self.snap: Snapshot | None = None
        self.next_k = 0
        self.last_t = -1
        self.last_active = 0
        """Epoch second of the latest event counted as activity (0: none yet)."""
        self.rows: dict[int, list[float]] = {}
        self.cancelled = [False] * n_cutoffs
        self.active = [False] * n_cutoffs
        self.outcome: list[str | None] = [None] * n_cutoffs
        """The latest ``churned``/``renewed`` outcome in each cutoff's horizon: ground truth over the inferred label."""
        self.bad: set[int] = set()
        self.erased = False


def _is_activity(event: CustomerEvent, activity: frozenset[str]) -> bool:
    if isinstance(event, (CustomerProfile, Outcome, ErasureRequested)):
        return False
    if isinstance(event, Payment) and event.status == "due":
        return False
    if isinstance(event, SubscriptionChanged) and event.change == "cancel":
        return False  # leaving is not activity
    if isinstance(event, Usage) and not (event.logins or event.features_used):
        return False  # a usage report of nothing
    return _TAGS[type(event)] in activity


_TAGS: dict[type[EventBase], str] = {cls: str(cls.__struct_config__.tag) for cls in EVENT_TYPES}


def build_dataset(
    events: Iterable[CustomerEvent],
    cutoffs: Sequence[datetime],
    *,
    horizon_days: int,
    label: LabelKind = "cancel",
    lateness_s: int,
    activity: frozenset[str] | None = None,
    hasher: IdentityHasher | None = None,
    progress: bool = False,
) -> Dataset:
    """Replay ``events`` once and return one row per customer alive at each cutoff.

    ``cutoffs`` must be sorted. Every label window ``(cutoff, cutoff + horizon]`` must end
    at or before the last event of the log, or the labels would be censored (ValueError).
    Customers with an erasure anywhere in the log are left out entirely.

    ``activity``: the event types that count as activity for the inactivity label (default
    :data:`ACTIVITY_TYPES`); a log of ``order_placed`` events alone works ("no order within
    the horizon"). The cancel label on a log without any cancellation is a ValueError.
    """
    active_types = ACTIVITY_TYPES if activity is None else frozenset(activity)
    unknown = active_types - ACTIVITY_TYPES
    if unknown or not active_types:
        raise ValueError(
            f"activity event types must be among {', '.join(sorted(ACTIVITY_TYPES))}"
            + (f" (got {', '.join(sorted(unknown))})" if unknown else "")
        )
    cuts = [int(c.timestamp()) for c in cutoffs]
    if cuts != sorted(cuts) or len(set(cuts)) != len(cuts):
        raise ValueError("cutoffs must be distinct and sorted")
    horizon_s = horizon_days * 86_400
    hasher = hasher or IdentityHasher(TRAINING_HASH_KEY)
    n_cuts = len(cuts)
    state: dict[str, _Replay] = {}
    first_t = math.inf
    last_t = -math.inf
    n_events = 0
    skipped = {"already_churned": 0, "no_activity_yet": 0, "erased": 0, "out_of_order": 0}
    any_cancel = False

    iterator: Iterable[CustomerEvent] = events
    if progress:
        from tqdm import tqdm

        iterator = tqdm(events, desc="replaying events", unit=" events", unit_scale=True, mininterval=1.0, disable=None)

    for event in iterator:
        n_events += 1
        t = int(event.occurred_at.timestamp())
        first_t = min(first_t, t)
        last_t = max(last_t, t)
        st = state.get(event.customer_id)
        if st is None:
            st = state[event.customer_id] = _Replay(n_cuts)
        if isinstance(event, ErasureRequested):
            st.erased = True
        # Checkpoint every cutoff this event is past: the snapshot holds only earlier events.
        while st.next_k < n_cuts and t > cuts[st.next_k]:
            _checkpoint(st, st.next_k, cuts[st.next_k], label, horizon_s, skipped)
            st.next_k += 1
        if st.next_k and t <= cuts[st.next_k - 1]:
            # Older than a cutoff already taken: the row would miss it, so drop those rows.
            st.bad.update(k for k in range(st.next_k) if t <= cuts[k])
        st.snap, _ = fold(st.snap, event, lateness_s=lateness_s, hasher=hasher)
        st.last_t = max(st.last_t, t)
        is_cancel = isinstance(event, SubscriptionChanged) and event.change == "cancel"
        any_cancel = any_cancel or is_cancel
        is_active = _is_activity(event, active_types)
        if is_active:
            st.last_active = max(st.last_active, t)
        # Labels: what happens in each cutoff's horizon.
        for k in range(st.next_k):
            if cuts[k] < t <= cuts[k] + horizon_s:
                if is_cancel:
                    st.cancelled[k] = True
                    if st.outcome[k] == "renewed":
                        st.outcome[k] = None  # a cancellation after the renewal: the renewal no longer says 0
                if is_active:
                    st.active[k] = True
                if isinstance(event, Outcome) and event.outcome in GROUND_TRUTH:
                    st.outcome[k] = event.outcome

    if n_events and label == "cancel" and not any_cancel:
        raise ValueError(NO_CANCEL_EVENTS)
    if n_events and cuts and cuts[-1] + horizon_s > last_t:
        raise ValueError(
            f"the label window of cutoff {cutoffs[-1]:%Y-%m-%d} ends after the last event of the log "
            f"({datetime.fromtimestamp(last_t, UTC):%Y-%m-%d}); choose cutoffs at least {horizon_days}d before it"
        )

    xs: list[list[float]] = []
    ys: list[int] = []
    ids: list[str] = []
    ks: list[int] = []
    sources: list[int] = []
    for cid, st in state.items():
        while st.next_k < n_cuts:
            _checkpoint(st, st.next_k, cuts[st.next_k], label, horizon_s, skipped)
            st.next_k += 1
        if st.erased:
            skipped["erased"] += len(st.rows)
            continue
        for k, row in sorted(st.rows.items()):
            if k in st.bad:
                skipped["out_of_order"] += 1
                continue
            xs.append(row)
            inferred = int(st.cancelled[k]) if label == "cancel" else int(not st.active[k])
            value, source = _outcome_label(st.outcome[k], inferred)
            ys.append(value)
            sources.append(source)
            ids.append(cid)
            ks.append(k)
    return Dataset(
        X=np.asarray(xs, dtype=np.float64).reshape(len(xs), len(FEATURE_NAMES)),
        y=np.asarray(ys, dtype=np.int8),
        customer_ids=ids,
        cutoff_index=np.asarray(ks, dtype=np.int16),
        cutoffs=list(cutoffs),
        first_event=datetime.fromtimestamp(first_t, UTC) if n_events else None,
        last_event=datetime.fromtimestamp(last_t, UTC) if n_events else None,
        events=n_events,
        skipped=skipped,
        label_source=np.asarray(sources, dtype=np.int8),
    )


def _outcome_label(outcome: str | None, inferred: int) -> tuple[int, int]:
    """(label, source; see :attr:`Dataset.label_source`): the latest ``churned``/``renewed`` outcome
    in the horizon where there is one, else the inferred label."""
    if outcome is None:
        return inferred, 0
    label = GROUND_TRUTH[outcome]
    return label, 1 if label == inferred else 2


def _checkpoint(st: _Replay, k: int, cut: int, label: LabelKind, horizon_s: int, skipped: dict[str, int]) -> None:
    snap = st.snap
    if snap is None or not snap.customer_id:
        return  # not a customer yet at this cutoff (or erased)
    if snap.subscription == "cancelled" or snap.outcome == "churned":
        skipped["already_churned"] += 1
        return
    if label == "inactivity" and not st.last_active:
        # Nothing to lapse from yet. Dormant customers stay in: the service scores them too.
        skipped["no_activity_yet"] += 1
        return
    st.rows[k] = features(snap, cut)
