"""Property, end to end: whatever the duplicates and the reordering within the lateness bound,
the snapshot a real consumer writes to Redis equals the reducer's fold of the de-duplicated,
time-ordered events.

One ``router consume`` process runs for the test; every Hypothesis example is a new customer
whose events go through the real broker and the real Redis.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings

from router.core.reducer import fold_all
from router.settings import Settings, to_env
from router.state.store import StateStore, connect
from schemas.events import CustomerEvent
from tests.conftest import SettingsFactory
from tests.support.helpers import hasher_of, produce
from tests.unit.core.test_reducer import LATE, histories

_ids = itertools.count()


@pytest.fixture
def live(settings: SettingsFactory, tmp_path: Path) -> Iterator[Settings]:
    # one partition: the offset of a customer's last record says when all of it has been read
    s = settings(stream={"lateness_s": LATE}, kafka={"partitions": 1})
    env = {**os.environ, **to_env(s), "ROUTER_STREAM_HEALTH_PORT": "0"}
    log = (tmp_path / "consumer.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "router", "consume"], env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        yield s
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _relabel(events: list[CustomerEvent], customer: str) -> list[CustomerEvent]:
    import msgspec

    return [msgspec.structs.replace(e, customer_id=customer) for e in events]


def test_redis_snapshot_equals_reference_fold(live: Settings) -> None:
    s = live
    hasher = hasher_of(s)

    async def applied(customer: str, expected: int, deadline: float) -> object:
        client = connect(s.redis.url, cluster=False)
        store = StateStore(client, s.redis.prefix, hasher)
        try:
            key = store.customer_key(customer)
            while time.monotonic() < deadline:
                rec = await store.read_customer(key)
                if rec.marks.get(0, -1) >= expected:
                    return rec.snapshot
                await asyncio.sleep(0.05)
            raise AssertionError(f"consumer did not apply {customer} in time")
        finally:
            await client.aclose()

    offsets: dict[int, int] = {}

    @hsettings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(histories(with_erasure=True))
    def check(h: tuple[list[CustomerEvent], list[CustomerEvent]]) -> None:
        in_order, delivered = h
        customer = f"HP{next(_ids)}"
        in_order, delivered = _relabel(in_order, customer), _relabel(delivered, customer)
        # single partition topic: the last offset tells when this customer's records are in
        asyncio.run(produce(s, delivered))
        offsets[0] = offsets.get(0, -1) + len(delivered)
        got = asyncio.run(applied(customer, offsets[0], time.monotonic() + 30))
        assert got == fold_all(in_order, lateness_s=LATE, hasher=hasher)

    check()
