"""In-process cost of each step of a decision, no HTTP, no Redis: where the CPU of classify goes.

Times (median of ``--repeats`` rounds, microseconds per call) of: snapshot decode, features,
ONNX ``predict_one``, scores (CLV, percentile, upsell, advocacy), the policy, the whole
:meth:`DecisionService.decide` (all of the above plus metrics and the audit enqueue; once running
the model, once reusing the consumer's stored score as a valid one allows) and the
JSON encoding of the answer, on snapshots built by :mod:`loadtests.population`.

Run: ``python -m loadtests.micro``
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from loadtests.population import _events
from router.churn.model import ChurnModel
from router.core.features import features
from router.core.identity import IdentityHasher
from router.core.reducer import Snapshot, fold
from router.core.scoring import ClvDistribution, advocacy_score, assess, clv_bin, upsell_score
from router.policy import DecisionInput, decide, load_policy
from router.serving.decisions import DecisionService, Resolved
from router.serving.live import Live
from router.settings import Settings
from router.state.audit import AuditWriter
from router.state.records import CustomerRecord, Scores, decode_snapshot, encode_snapshot
from router.state.store import StateStore, connect
from schemas.api import ClassifyRequest, CustomerRef

__all__ = ["measure"]


def _time(fn: Callable[[int], object], n: int, repeats: int) -> float:
    rounds = []
    for _ in range(repeats):
        # CPU time of this thread: on a shared machine, time spent descheduled is not the code's.
        t0 = time.thread_time()
        for i in range(n):
            fn(i)
        rounds.append((time.thread_time() - t0) / n * 1e6)
    return round(statistics.median(rounds), 2)


def measure(n: int = 2_000, repeats: int = 5) -> dict[str, Any]:
    """Microseconds per call of each decision step (median of ``repeats`` rounds of ``n`` calls)."""
    settings = Settings()
    hasher = IdentityHasher.from_settings(settings.identity)
    model = ChurnModel.load(settings.model.path)
    policy = load_policy(settings.policy.path)
    now = datetime.now(UTC)
    rnd = random.Random(7)
    snaps: list[Snapshot] = []
    for i in range(500):
        snap = None
        for event in _events(i, rnd, now):
            snap, _ = fold(snap, event, lateness_s=settings.stream.lateness_s, hasher=hasher)
        assert snap is not None
        snaps.append(snap)
    ts = int(time.time())
    rows = [features(s, ts) for s in snaps]
    churns = [model.predict_one(r) for r in rows]
    values = [
        assess(s, r, c, settings.model, policy.service_prices).clv.value
        for s, r, c in zip(snaps, rows, churns, strict=True)
    ]
    dist = ClvDistribution({b: 1 + (b % 7) for b in {clv_bin(v) for v in values}})
    raw = [encode_snapshot(s) for s in snaps]
    # Never connected: decide() does no I/O; the audit queue is drained between rounds.
    store = StateStore(connect(settings.redis.url, cluster=False), settings.redis.prefix, hasher)
    audit = AuditWriter(store)
    live = Live(model, policy, store, model_path=settings.model.path, policy_path=settings.policy.path)
    live.distribution = dist
    service = DecisionService(live, store, audit, settings.redis, settings.model)
    reqs = [
        ClassifyRequest(customer=CustomerRef(customer_id=s.customer_id), channel="email", category="billing")
        for s in snaps
    ]
    resolved = [
        Resolved(s.customer_id, hasher.customer_key(s.customer_id), CustomerRecord(s, {}, Scores(), None), None)
        for s in snaps
    ]
    inputs = [
        DecisionInput(known=True, clv_percentile=dist.percentile(v), churn=c, upsell=upsell_score(r, c),
                      advocacy=advocacy_score(r), sentiment=None, segment=s.segment, channel="email",
                      category="billing", priority="normal", open_tickets=0, late_payments_90d=0, nps=s.nps,
                      subscription_active=True, mrr=r[0], days_since_last_interaction=1.0, override_tier=None)
        for s, r, c, v in zip(snaps, rows, churns, values, strict=True)
    ]  # fmt: skip
    # The consumer's stored score, reusable for the whole measurement (the cost of the reuse path itself).
    reusing = [
        Resolved(
            s.customer_id,
            hasher.customer_key(s.customer_id),
            CustomerRecord(s, {}, Scores(churn=c, model_id=model.model_id, as_of=ts, valid_until=ts + 3_600), None),
            None,
        )
        for s, c in zip(snaps, churns, strict=True)
    ]
    decisions = [service.decide(q, r) for q, r in zip(reqs, resolved, strict=True)]
    enc = msgspec.json.Encoder()
    k = len(snaps)

    def whole(i: int, on: list[Resolved] = resolved) -> object:
        if audit.queue.qsize() > 40_000:
            audit.queue = type(audit.queue)(maxsize=50_000)
        return service.decide(reqs[i % k], on[i % k])

    return {
        "snapshot_decode_us": _time(lambda i: decode_snapshot(raw[i % k]), n, repeats),
        "snapshot_bytes_median": statistics.median(len(b) for b in raw),
        "features_us": _time(lambda i: features(snaps[i % k], ts), n, repeats),
        "predict_one_us": _time(lambda i: model.predict_one(rows[i % k]), n, repeats),
        "scores_us": _time(
            lambda i: (
                dist.percentile(
                    assess(snaps[i % k], rows[i % k], churns[i % k], settings.model, policy.service_prices).clv.value
                ),
                upsell_score(rows[i % k], churns[i % k]),
                advocacy_score(rows[i % k]),
            ),
            n,
            repeats,
        ),
        "policy_us": _time(lambda i: decide(policy, inputs[i % k], now), n, repeats),
        "decide_total_us": _time(whole, n, repeats),
        "decide_reused_us": _time(lambda i: whole(i, reusing), n, repeats),
        "json_encode_answer_us": _time(lambda i: enc.encode(decisions[i % k]), n, repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    text = json.dumps(measure(args.n, args.repeats), indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
