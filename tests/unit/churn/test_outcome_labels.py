"""Outcome events are labels: ``churned`` / ``renewed`` in a row's horizon override the inferred label."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from router.churn.training.dataset import build_dataset, label_definition
from router.settings import Settings
from schemas.events import CustomerEvent, CustomerProfile, Outcome, SubscriptionChanged, Usage

START = datetime(2026, 1, 1, tzinfo=UTC)
CUTOFF = datetime(2026, 3, 1, tzinfo=UTC)
LATENESS = Settings().stream.lateness_s


def _customer(cid: str, *after_cutoff: tuple[int, str]) -> list[CustomerEvent]:
    """A subscriber since START, active until the cutoff; then (days after the cutoff, what) happens."""
    events: list[CustomerEvent] = [
        CustomerProfile(event_id=f"{cid}-p", customer_id=cid, occurred_at=START),
        SubscriptionChanged(
            event_id=f"{cid}-n", customer_id=cid, occurred_at=START + timedelta(hours=1), change="new", mrr_delta=10.0
        ),
        Usage(event_id=f"{cid}-u", customer_id=cid, occurred_at=CUTOFF - timedelta(days=3), logins=2),
    ]
    for n, (days, what) in enumerate(after_cutoff):
        at = CUTOFF + timedelta(days=days)
        if what == "cancel":
            events.append(
                SubscriptionChanged(
                    event_id=f"{cid}-c{n}", customer_id=cid, occurred_at=at, change="cancel", mrr_delta=-10.0
                )
            )
        elif what == "usage":
            events.append(Usage(event_id=f"{cid}-u{n}", customer_id=cid, occurred_at=at, logins=1))
        else:
            events.append(Outcome(event_id=f"{cid}-o{n}", customer_id=cid, occurred_at=at, outcome=what))  # type: ignore[arg-type]
    return events


def _labels(label: str = "cancel") -> dict[str, tuple[int, int]]:
    events = [
        *_customer("A", (10, "churned")),  # no cancellation seen, the business says churned: 1
        *_customer("B", (5, "cancel"), (40, "renewed")),  # cancelled, then won back and renewed: 0
        *_customer("C", (5, "renewed"), (50, "cancel")),  # renewed, then cancelled: the cancellation stands
        *_customer("D", (20, "cancel"), (21, "churned")),  # both agree
        *_customer("E", (30, "usage"), (120, "churned")),  # the outcome is after the horizon: inferred 0
        *_customer("F", (30, "usage")),  # nothing: inferred 0
        *_customer("Z", (200, "cancel")),  # the log must outlast the horizon
    ]
    events.sort(key=lambda e: e.occurred_at)
    data = build_dataset(events, [CUTOFF], horizon_days=90, label=label, lateness_s=LATENESS)  # type: ignore[arg-type]
    assert data.label_source is not None
    return {cid: (int(y), int(src)) for cid, y, src in zip(data.customer_ids, data.y, data.label_source, strict=True)}


def test_churned_and_renewed_outcomes_are_ground_truth_for_the_cancel_label() -> None:
    got = _labels("cancel")
    assert got["A"] == (1, 2)  # overrode the inferred 0
    assert got["B"] == (0, 2)  # overrode the inferred 1
    assert got["C"] == (1, 0)  # the renewal before a cancellation does not say 0
    assert got["D"] == (1, 1)  # confirmed
    assert got["E"] == (0, 0)
    assert got["F"] == (0, 0)


def test_outcomes_override_the_inactivity_label_too() -> None:
    got = _labels("inactivity")
    assert got["A"] == (1, 1)  # inactive and churned
    assert got["B"] == (0, 2)  # no activity after the cutoff, but renewed: 0
    assert got["E"] == (0, 0) and got["F"] == (0, 0)


def test_counts_and_the_card_definition_say_so() -> None:
    events = sorted(
        [
            *_customer("A", (10, "churned")),
            *_customer("B", (5, "cancel"), (40, "renewed")),
            *_customer("Z", (200, "cancel")),
        ],
        key=lambda e: e.occurred_at,
    )
    data = build_dataset(events, [CUTOFF], horizon_days=90, lateness_s=LATENESS)
    assert data.outcome_labels() == {"churned": 1, "renewed": 1, "changed": 2}
    assert data.select([0]).outcome_labels() == data.outcome_labels()
    assert "'renewed'" in label_definition("cancel", 90) and "'renewed'" in label_definition("inactivity", 90)
