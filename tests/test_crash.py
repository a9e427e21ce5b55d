"""Crash test: kill -9 and restart consumer processes, add one (rebalance); nothing lost, nothing doubled.

100k keyed events for 2,000 customers (with producer retries) are consumed by a group of
real `router consume` processes that are killed with SIGKILL at random moments and
replaced, and a third member joins mid-run. At the end every customer's snapshot in Redis
must equal the reducer's fold of that customer's events.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from router.reducer import fold_all
from router.settings import Settings, to_env
from schemas.events import CustomerEvent, OrderPlaced, TicketOpened, Usage
from tests.conftest import SettingsFactory
from tests.helpers import hasher_of, produce, state_store

N_EVENTS = 100_000
N_CUSTOMERS = 2_000


def _events(rnd: random.Random) -> tuple[list[CustomerEvent], dict[str, list[CustomerEvent]]]:
    start = datetime.now(UTC) - timedelta(days=30)
    per: dict[str, list[CustomerEvent]] = {}
    stream: list[CustomerEvent] = []
    clock = {f"K{c:05d}": start for c in range(N_CUSTOMERS)}
    for i in range(N_EVENTS):
        cid = f"K{rnd.randrange(N_CUSTOMERS):05d}"
        clock[cid] += timedelta(seconds=rnd.randint(1, 900))
        t = clock[cid]
        r = rnd.random()
        e: CustomerEvent
        if r < 0.5:
            e = Usage(event_id=f"e{i}", customer_id=cid, occurred_at=t, logins=rnd.randint(0, 5))
        elif r < 0.85:
            e = OrderPlaced(
                event_id=f"e{i}", customer_id=cid, occurred_at=t, order_id=f"o{i}", amount=rnd.randint(1, 99)
            )
        else:
            e = TicketOpened(event_id=f"e{i}", customer_id=cid, occurred_at=t, ticket_id=f"t{i}")
        per.setdefault(cid, []).append(e)
        stream.append(e)
        if rnd.random() < 0.01:  # producer retry: same event again, new offset
            stream.append(e)
    return stream, per


def _spawn(s: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **to_env(s), "ROUTER_STREAM_HEALTH_PORT": "0", "ROUTER_API_LOG_LEVEL": "warning"}
    return subprocess.Popen(
        [sys.executable, "-m", "router", "consume"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.mark.slow
def test_kill_and_rebalance_lose_nothing_and_apply_nothing_twice(settings: SettingsFactory, tmp_path: Path) -> None:
    s = settings(kafka={"partitions": 6, "session_timeout_ms": 6000})
    rnd = random.Random(2026)
    stream, per_customer = _events(rnd)
    asyncio.run(produce(s, stream))

    log = tmp_path / "consumers.log"
    procs = [_spawn(s, log), _spawn(s, log)]
    kills = 0
    deadline = time.monotonic() + 240
    joined = False

    async def stored() -> int:
        async with state_store(s) as store:
            return sum((await store.stored_offsets(s.kafka.group_id, s.kafka.events_topic)).values())

    try:
        while time.monotonic() < deadline:
            time.sleep(rnd.uniform(0.8, 2.0))
            done = asyncio.run(stored())
            if done >= len(stream):
                break
            if kills < 4:
                victim = procs.pop(rnd.randrange(len(procs)))
                os.kill(victim.pid, signal.SIGKILL)
                victim.wait()
                kills += 1
                procs.append(_spawn(s, log))
            elif not joined:
                procs.append(_spawn(s, log))  # a new member: rebalance while consuming
                joined = True
        else:
            raise AssertionError(f"not caught up: {asyncio.run(stored())}/{len(stream)}\n{log.read_text()[-3000:]}")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    assert kills == 4
    hasher = hasher_of(s)

    async def compare() -> tuple[int, list[str]]:
        wrong = []
        async with state_store(s) as store:
            ids = sorted(per_customer)
            records = await store.read_customers([store.customer_key(c) for c in ids])
            for cid, rec in zip(ids, records, strict=True):
                expected = fold_all(per_customer[cid], lateness_s=s.stream.lateness_s, hasher=hasher)
                if rec.snapshot != expected:
                    wrong.append(cid)
        return len(ids), wrong

    checked, wrong = asyncio.run(compare())
    assert checked == N_CUSTOMERS
    assert wrong == [], f"{len(wrong)} customers differ from the reference fold, e.g. {wrong[:5]}"
