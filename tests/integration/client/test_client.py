"""router.client against a live server: what a Rasa action or a script gets back."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from router.client import AsyncRouterClient, RouterClient, RouterError
from router.settings import Settings
from schemas.api import ClassifyRequest, Conversation, CustomerRef, HandoffRequest
from schemas.events import NpsResponse, OrderPlaced, Usage
from tests.support.api_support import KEYS, VIP_ID, VIP_PHONE, live_server, module_settings, populate, population
from tests.support.helpers import read_snapshot, running_consumer, state_store, wait_until_caught_up


@pytest.fixture(scope="module")
def base_url(
    broker: str, redis_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Settings]]:
    s = module_settings(broker, redis_server.url, "client")
    events = population(20)
    asyncio.run(populate(s, events))
    with live_server(s, tmp_path_factory.mktemp("client") / "api.log"):
        yield f"http://{s.api.host}:{s.api.port}", s


def test_sync_client_classify_screenpop_handoff(base_url: tuple[str, Settings]) -> None:
    url, _ = base_url
    with RouterClient(url, KEYS["telephony"]) as router:
        card = router.screenpop(VIP_PHONE)
        assert card.caller == "known" and card.tier == "VIP"
        assert router.screenpop("tel:+44-20-7946-0000").caller == "unknown"
        decision = router.classify(ClassifyRequest(customer=CustomerRef(customer_id=VIP_ID), channel="phone"))
        assert decision.tier == "VIP" and decision.customer_known and decision.reasons
        with pytest.raises(RouterError) as err:
            router.handoff(HandoffRequest(customer=CustomerRef(customer_id=VIP_ID)))
        assert err.value.status_code == 403 and err.value.error == "forbidden"
    with RouterClient(url, KEYS["chatbot"]) as bot:
        answer = bot.handoff(
            HandoffRequest(customer=CustomerRef(customer_id=VIP_ID), conversation=Conversation(asked_for_human=True))
        )
        assert answer.handover is True and answer.tier == "VIP"
    with RouterClient(url, "not-a-key-of-this-service") as stranger, pytest.raises(RouterError) as err:
        stranger.classify(ClassifyRequest(customer=CustomerRef(customer_id=VIP_ID)))
    assert err.value.status_code == 401


def test_async_client_sends_events_the_consumer_applies(base_url: tuple[str, Settings]) -> None:
    url, s = base_url
    now = datetime.now(UTC).replace(microsecond=0)
    events = [
        OrderPlaced(
            event_id="CLI1-o", customer_id="CLI1", occurred_at=now - timedelta(days=2), order_id="o1", amount=80.0
        ),
        Usage(event_id="CLI1-u", customer_id="CLI1", occurred_at=now - timedelta(days=1), logins=3),
        NpsResponse(event_id="CLI1-n", customer_id="CLI1", occurred_at=now - timedelta(hours=1), score=9),
    ]

    async def run() -> None:
        async with AsyncRouterClient(url, KEYS["events"]) as client:
            accepted = await client.send_events(events)
            assert accepted.accepted == 3 and [e.event_id for e in accepted.events] == ["CLI1-o", "CLI1-u", "CLI1-n"]
            future = NpsResponse(event_id="CLI1-f", customer_id="CLI1", occurred_at=now + timedelta(days=2), score=3)
            with pytest.raises(RouterError) as err:
                await client.send_events([events[0], future])
            assert err.value.status_code == 400 and [p.index for p in err.value.items] == [1]
            assert "future" in err.value.items[0].problem
        total = len(population(20)) + 3
        async with running_consumer(s) as worker:
            await wait_until_caught_up(worker, s, total)
        async with state_store(s) as store:
            snap = await read_snapshot(store, "CLI1")
        assert snap is not None and snap.orders_total == 1 and snap.nps == 9

    asyncio.run(run())
