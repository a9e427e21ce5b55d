"""Fast population loader: N customers written straight into Redis, in the service's own layout.

Each customer gets a few synthetic events (profile with a phone number, subscription, orders,
usage, sometimes a resolved ticket or an NPS answer), folded with the real reducer
(:func:`router.core.reducer.fold`), scored like the consumer scores (features, batched ONNX churn,
CLV and its histogram bin) and written with :meth:`router.state.store.StateStore.apply`: the same
Lua compare-and-set, key layout, CLV histogram, due index (under the partition Kafka's default
partitioner gives the customer id) and phone index the consumer writes. Kafka is skipped on
purpose: this is about the read path at population scale, not about ingest (see
``loadtests.bench_ingest`` for that). Portfolio KPI counters are not maintained.

Customer ``i`` has id ``C%07d`` and phone ``phone_of(i)``, so load generators can pick
random customers without a list. Chunks are folded and written by a process pool (one
process per core), each with its own Redis connection.

Run: ``python -m loadtests.population --customers 1000000 --redis-url redis://127.0.0.1:6379/0``
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import random
import time
from datetime import UTC, datetime, timedelta

import numpy as np
from aiokafka.partitioner import murmur2

from router.churn.model import ChurnModel
from router.core.features import features
from router.core.identity import IdentityHasher
from router.core.reducer import fold
from router.core.scoring import assess, clv_bin
from router.policy import load_policy
from router.settings import Settings
from router.state.records import Scores, WriteOp, due_time
from router.state.store import StateStore, connect_redis
from schemas.events import (
    CustomerEvent,
    CustomerProfile,
    NpsResponse,
    OrderPlaced,
    SubscriptionChanged,
    TicketResolved,
    Usage,
)

__all__ = ["customer_id", "load_population", "phone_of"]

_CHUNK = 5_000
_SEGMENTS = (("consumer", 0.6), ("smb", 0.3), ("mid_market", 0.08), ("enterprise", 0.02))
_PLANS = {"consumer": "basic", "smb": "team", "mid_market": "business", "enterprise": "enterprise"}
_MRR = {"consumer": 9.0, "smb": 49.0, "mid_market": 490.0, "enterprise": 4900.0}


def customer_id(i: int) -> str:
    """Id of customer ``i`` of a loaded population."""
    return f"C{i:07d}"


def phone_of(i: int) -> str:
    """Phone number of customer ``i`` (Berlin, eight-digit subscriber number: a possible number)."""
    return f"+4930{10_000_000 + i:08d}"


def _segment(r: float) -> str:
    for name, share in _SEGMENTS:
        if r < share:
            return name
        r -= share
    return "consumer"


_H1, _M50, _M40, _M20, _M10 = (timedelta(minutes=m) for m in (60, 50, 40, 20, 10))


def _events(i: int, rnd: random.Random, now: datetime, *, phones: bool = True) -> list[CustomerEvent]:
    """Three to six events of customer ``i`` in event-time order (the consumer drops much older ones)."""
    cid = customer_id(i)
    u = rnd.random
    seg = _segment(u())
    signup = (now - timedelta(days=30 + int(u() * 870))).date()
    # The lateness bound is a day behind the newest event: everything is within the last day.
    recent = now - timedelta(seconds=7200 + int(u() * 64800))
    mrr = _MRR[seg] * (0.5 + u())
    events: list[CustomerEvent] = [
        CustomerProfile(event_id=f"{cid}-p", customer_id=cid, occurred_at=recent - _H1, segment=seg,
                        plan=_PLANS[seg], phones=[phone_of(i)] if phones else [],
                        acquisition_cost=round(mrr * (1 + 5 * u()), 2), signup_date=signup),
        SubscriptionChanged(event_id=f"{cid}-s", customer_id=cid, occurred_at=recent - _M50, change="new",
                            plan=_PLANS[seg], mrr_delta=round(mrr, 2)),
    ]  # fmt: skip
    for k in range(int(u() * 3)):
        events.append(
            OrderPlaced(event_id=f"{cid}-o{k}", customer_id=cid, occurred_at=recent - _M40, order_id=f"o{k}",
                        amount=round(mrr * (0.5 + 3.5 * u()), 2))
        )  # fmt: skip
    events.append(
        Usage(event_id=f"{cid}-u", customer_id=cid, occurred_at=recent - _M20, logins=int(u() * 30),
              features_used=int(u() * 12))
    )  # fmt: skip
    r = u()
    if r < 0.3:
        events.append(
            TicketResolved(event_id=f"{cid}-t", customer_id=cid, occurred_at=recent - _M10, ticket_id="t1",
                           sentiment=round(2 * u() - 1, 2), csat=1 + int(u() * 5))
        )  # fmt: skip
    elif r < 0.45:
        events.append(
            NpsResponse(event_id=f"{cid}-n", customer_id=cid, occurred_at=recent - _M10, score=int(u() * 11))
        )  # fmt: skip
    return events


# --- one process's share ---------------------------------------------------------------------

_state: dict[str, object] = {}


def _init(settings: Settings) -> None:
    _state["settings"] = settings
    _state["hasher"] = IdentityHasher.from_settings(settings.identity)
    _state["model"] = ChurnModel.load(settings.model.path)
    _state["prices"] = load_policy(settings.policy.path).service_prices


def _load_chunk(start: int, stop: int, now_ts: float) -> int:
    return asyncio.run(_load_chunk_async(start, stop, now_ts))


async def _load_chunk_async(start: int, stop: int, now_ts: float) -> int:
    settings = _state["settings"]
    hasher = _state["hasher"]
    model = _state["model"]
    prices = _state["prices"]
    assert isinstance(settings, Settings) and isinstance(hasher, IdentityHasher) and isinstance(model, ChurnModel)
    now = datetime.fromtimestamp(now_ts, UTC)
    rnd = random.Random(start)  # deterministic for a given chunking
    lateness = settings.stream.lateness_s
    ops: list[WriteOp] = []
    client = connect_redis(settings.redis, timeout_s=None)
    store = StateStore(client, settings.redis.prefix, hasher)
    keys = store.keys
    try:
        for i in range(start, stop):
            # Phone normalisation is two thirds of a fold here; phone_of() is E.164 already, so the
            # key is hashed directly, and checked against the reducer's own once per chunk below.
            snap = None
            for event in _events(i, rnd, now, phones=False):
                snap, _ = fold(snap, event, lateness_s=lateness, hasher=hasher)
            assert snap is not None
            snap.phone_keys = [hasher.digest("phone", phone_of(i))]
            cid = snap.customer_id
            # The partition Kafka's default partitioner gives the customer id: its due index is that one's.
            partition = (murmur2(cid.encode()) & 0x7FFFFFFF) % settings.kafka.partitions
            ops.append(
                WriteOp(
                    customer_key=hasher.customer_key(cid),
                    expected_marks=None,
                    marks={partition: i},
                    snapshot=snap,
                    scores=Scores(),
                    old_bin=None,
                    index_add=[],  # written below with one MSET per batch: same keys and values
                    index_remove=[],
                    partition=partition,
                )
            )
        check = None
        for event in _events(start, random.Random(0), now):
            check, _ = fold(check, event, lateness_s=lateness, hasher=hasher)
        assert check is not None and check.phone_keys == ops[0].snapshot.phone_keys, (
            "phone key differs from the reducer's"
        )
        as_of = int(now_ts)
        times = [max(as_of, op.snapshot.last_event_at) for op in ops]
        feats = [features(op.snapshot, t) for op, t in zip(ops, times, strict=True)]
        churn = model.predict(np.asarray(feats, np.float32)).tolist()
        for op, row, t, p in zip(ops, feats, times, churn, strict=True):
            clv = assess(op.snapshot, row, p, settings.model, prices).clv
            value = clv.value
            # As the consumer writes them: the request path reuses the score while it stays exact.
            op.scores = Scores(
                churn=p,
                clv=value,
                clv_bin=clv_bin(value),
                scored_at=as_of,
                model_id=model.model_id,
                as_of=t,
                valid_until=model.stable_until(op.snapshot, row, t),
                support_cost=clv.support_cost_per_year,
                partition=op.partition,
            )
            op.due_at = due_time(op.scores, settings.stream.sweep_max_age_s)
        for k in range(0, len(ops), 1_000):
            batch = ops[k : k + 1_000]
            await client.mset({keys.phone(op.snapshot.phone_keys[0]): op.snapshot.customer_id for op in batch})
            await store.apply(batch)
    finally:
        await client.aclose()
    return stop - start


def load_population(
    settings: Settings,
    customers: int,
    *,
    start: int = 0,
    processes: int | None = None,
    as_of: float | None = None,
) -> float:
    """Write customers ``start`` .. ``customers - 1`` into the Redis of ``settings``; seconds taken.

    ``as_of`` (default now): when the customers' events happened and they were scored; a time in
    the past leaves them due for the sweep now (``loadtests.bench_sweep``).
    """
    t0 = time.perf_counter()
    now_ts = time.time() if as_of is None else as_of
    chunks = [(s, min(customers, s + _CHUNK)) for s in range(start, customers, _CHUNK)]
    if not chunks:
        return 0.0
    workers = max(1, min(processes or os.cpu_count() or 1, len(chunks)))
    if workers == 1:
        _init(settings)
        for s, e in chunks:
            _load_chunk(s, e, now_ts)
    else:
        ctx = __import__("multiprocessing").get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_init, initargs=(settings,)
        ) as pool:
            for _ in pool.map(_load_chunk, *zip(*chunks, strict=True), [now_ts] * len(chunks)):
                pass
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--redis-url", default=None, help="default: ROUTER_REDIS_URL / REDIS_URL / settings default")
    parser.add_argument("--prefix", default=None)
    parser.add_argument("--processes", type=int, default=None)
    args = parser.parse_args()
    import msgspec

    settings = Settings.from_env()
    redis = settings.redis
    if args.redis_url:
        redis = msgspec.structs.replace(redis, url=args.redis_url)
    if args.prefix:
        redis = msgspec.structs.replace(redis, prefix=args.prefix)
    settings = msgspec.structs.replace(settings, redis=redis)
    seconds = load_population(settings, args.customers, processes=args.processes)
    print(f"loaded {args.customers:,} customers in {seconds:.1f} s ({args.customers / seconds:,.0f}/s)")


if __name__ == "__main__":
    main()
