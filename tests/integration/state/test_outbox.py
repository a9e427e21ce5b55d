"""The write-back outbox on a real Redis: every write-back is in exactly one place, whatever crashes."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from router.state.keys import Keys
from router.state.outbox import Outbox
from tests.conftest import SettingsFactory


async def test_a_write_back_held_by_a_crashed_process_is_taken_over_once(settings: SettingsFactory) -> None:
    s = settings()
    client = Redis.from_url(s.redis.url)
    try:
        outbox = Outbox(client, Keys(s.redis.prefix))
        await outbox.ensure_group("zendesk")
        await outbox.ensure_group("zendesk")  # idempotent (a second process starting)
        assert await outbox.enqueue("zendesk", "1", b"job-1", dedupe_s=60)
        assert not await outbox.enqueue("zendesk", "1", b"job-1-again", dedupe_s=60)  # same ticket in the window
        assert await outbox.enqueue("zendesk", "2", b"job-2", dedupe_s=0)

        (first, second) = await outbox.read("crashed", ["zendesk"], 10, block_ms=10)
        assert (first.job, second.job) == (b"job-1", b"job-2")
        # "crashed" dies holding both. Another process sees nothing new ...
        assert await outbox.read("survivor", ["zendesk"], 10, block_ms=10) == []
        assert await outbox.reclaim("survivor", "zendesk", idle_ms=60_000, count=10) == []  # not idle long enough
        await asyncio.sleep(0.05)
        taken = await outbox.reclaim("survivor", "zendesk", idle_ms=20, count=10)
        assert [d.job for d in taken] == [b"job-1", b"job-2"]
        status = await outbox.status("zendesk")
        assert (status.queued, status.in_flight) == (2, 2)

        # ... and settles them: one landed, one to retry later, which comes back only when due.
        now = time.time()
        await outbox.landed(taken[0], b"record", now)
        await outbox.later(taken[1], b"job-2-attempt-2", now + 0.2, now, "PUT /x: HTTP 500")
        status = await outbox.status("zendesk")
        assert (status.queued, status.in_flight, status.delayed) == (0, 0, 1)
        assert status.failure == "PUT /x: HTTP 500" and status.landed_at == now
        assert await outbox.promote("zendesk", now) == 0
        assert await outbox.promote("zendesk", now + 0.3) == 1
        (again,) = await outbox.read("survivor", ["zendesk"], 10, block_ms=10)
        assert again.job == b"job-2-attempt-2"
        await outbox.dead(again, b"job-2-final", time.time(), "PUT /x: HTTP 404")
        assert [(j, c) for _, j, c in await outbox.dead_letters("zendesk")] == [(b"job-2-final", "PUT /x: HTTP 404")]
        (entry_id, _, _) = (await outbox.dead_letters("zendesk"))[0]
        assert await outbox.requeue("zendesk", entry_id, b"job-2-requeued")
        assert not await outbox.requeue("zendesk", entry_id, b"job-2-requeued")  # moved once only
        (back,) = await outbox.read("survivor", ["zendesk"], 10, block_ms=10)
        assert back.job == b"job-2-requeued" and await outbox.recent_landed("zendesk") == [b"record"]
    finally:
        await client.aclose()


async def test_the_watermark_moves_with_its_write_backs_or_not_at_all(settings: SettingsFactory) -> None:
    s = settings()
    client = Redis.from_url(s.redis.url)
    try:
        outbox = Outbox(client, Keys(s.redis.prefix))
        assert await outbox.mark("rt") is None
        assert await outbox.follow("rt", None, "10", [])
        # two processes polled the same tickets; only the first one's write-backs count
        assert await outbox.follow("rt", "10", "12", [b"t11", b"t12"])
        assert not await outbox.follow("rt", "10", "12", [b"t11-again", b"t12-again"])
        assert await outbox.mark("rt") == "12"
        assert (await outbox.status("rt")).queued == 2
    finally:
        await client.aclose()
