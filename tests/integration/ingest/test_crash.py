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
from pathlib import Path

import pytest

from router.settings import Settings, to_env
from tests.conftest import SettingsFactory
from tests.support.helpers import compare_with_reference, event_stream, produce, state_store

N_EVENTS = 100_000
N_CUSTOMERS = 2_000


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
    stream, per_customer = event_stream(
        rnd, N_EVENTS, N_CUSTOMERS, prefix="K", days=30, max_step_s=900, retry_rate=0.01
    )
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
    wrong, lost, duplicated = asyncio.run(compare_with_reference(s, per_customer))
    assert len(per_customer) == N_CUSTOMERS
    assert (wrong, lost, duplicated) == ([], 0, 0), (
        f"{len(wrong)} customers differ from the reference fold, e.g. {wrong[:5]}"
    )
