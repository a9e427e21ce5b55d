"""The synthetic business: reproducible, valid on the wire, plausible, and producible to Kafka."""

from __future__ import annotations

import collections
import io
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from router.core.identity import IdentityHasher, normalise_phone
from router.devstack.demo import generate_history, history_window, write_jsonl
from schemas.events import (
    CustomerEvent,
    CustomerProfile,
    Outcome,
    SubscriptionChanged,
    Usage,
    event_decoder,
    event_encoder,
)

START, END = history_window(6)


@pytest.fixture(scope="module")
def history() -> list[CustomerEvent]:
    return list(generate_history(300, START, END, seed=11))


def test_same_seed_same_events_other_seed_other_events(history: list[CustomerEvent]) -> None:
    again = list(generate_history(300, START, END, seed=11))
    assert [event_encoder.encode(e) for e in again] == [event_encoder.encode(e) for e in history]
    other = list(generate_history(300, START, END, seed=12))
    assert [event_encoder.encode(e) for e in other[:200]] != [event_encoder.encode(e) for e in history[:200]]


def test_every_event_survives_the_wire_decoder(history: list[CustomerEvent]) -> None:
    buf = io.BytesIO()
    assert write_jsonl(history, buf) == len(history)
    lines = buf.getvalue().splitlines()
    decoded = [event_decoder.decode(line) for line in lines]
    assert decoded == history


def test_sorted_unique_and_inside_the_window(history: list[CustomerEvent]) -> None:
    times = [e.occurred_at for e in history]
    assert times == sorted(times)
    assert times[0] >= START and times[-1] < END
    assert len({e.event_id for e in history}) == len(history)


def test_every_customer_starts_with_a_profile_and_a_subscription(history: list[CustomerEvent]) -> None:
    by_customer: dict[str, list[CustomerEvent]] = collections.defaultdict(list)
    for e in history:
        by_customer[e.customer_id].append(e)
    assert len(by_customer) == 300
    hasher = IdentityHasher(b"test-key-0123456789abcdef")
    e164: dict[str, str] = {}
    for cid, events in by_customer.items():
        assert cid.startswith("C") and len(cid) == 7
        first = events[0]
        assert isinstance(first, CustomerProfile)
        assert 1 <= len(first.phones) <= 3 and first.emails and first.signup_date is not None
        for phone in first.phones:
            assert hasher.phone_key(phone) is not None, phone
            number = normalise_phone(phone, "DE")
            assert e164.setdefault(number, cid) == cid, f"{number} shared by {cid} and {e164[number]}"
        assert any(isinstance(e, SubscriptionChanged) and e.change == "new" for e in events[:3])


def test_population_is_plausible(history: list[CustomerEvent]) -> None:
    kinds = collections.Counter(type(e).__name__ for e in history)
    assert kinds["Usage"] > kinds["Payment"] > kinds["TicketOpened"] > 0
    cancels = {e.customer_id for e in history if isinstance(e, SubscriptionChanged) and e.change == "cancel"}
    assert 0.03 < len(cancels) / 300 < 0.35
    assert {e.customer_id for e in history if isinstance(e, Outcome) and e.outcome == "churned"} <= cancels
    mrr: dict[str, float] = collections.Counter()
    segment = {e.customer_id: e.segment for e in history if isinstance(e, CustomerProfile)}
    for e in history:
        if isinstance(e, SubscriptionChanged):
            mrr[e.customer_id] += e.mrr_delta
    by_segment: dict[str, list[float]] = collections.defaultdict(list)
    for cid, value in mrr.items():
        by_segment[segment[cid]].append(value)
    assert max(by_segment["enterprise"], default=0) > 50 * max(by_segment["consumer"])
    assert len(by_segment["consumer"]) > len(by_segment.get("enterprise", []))
    # Fading usage precedes cancellation: the month before a warned cancel has fewer logins.
    logins: dict[str, list[tuple[datetime, int]]] = collections.defaultdict(list)
    for e in history:
        if isinstance(e, Usage):
            logins[e.customer_id].append((e.occurred_at, e.logins))
    drops = 0
    for e in history:
        if isinstance(e, SubscriptionChanged) and e.change == "cancel" and e.occurred_at - START > timedelta(90):
            before = [n for t, n in logins[e.customer_id] if timedelta(0) < e.occurred_at - t <= timedelta(30)]
            earlier = [n for t, n in logins[e.customer_id] if timedelta(60) < e.occurred_at - t <= timedelta(90)]
            drops += sum(before) < sum(earlier)
    assert drops >= 3


def test_ten_times_more_customers_stays_fast() -> None:
    began = time.monotonic()
    n = sum(1 for _ in generate_history(600, *history_window(3), seed=3))
    assert n > 10_000
    assert time.monotonic() - began < 10


def test_cli_generate_writes_the_same_history(tmp_path: Path) -> None:
    from router.cli import main

    out = tmp_path / "h.jsonl"
    assert main(["generate", "--customers", "40", "--months", "2", "--seed", "3", "--out", str(out)]) == 0
    expected = b"".join(event_encoder.encode(e) + b"\n" for e in generate_history(40, *history_window(2), seed=3))
    assert out.read_bytes() == expected
