"""Customer view, overrides, outcome feedback, erasure, portfolio and reloads, on real Kafka and Redis."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from litestar.testing import AsyncTestClient

from router.api.app import create_app
from router.core.scoring import support_cost
from router.policy import load_policy
from router.settings import Settings
from schemas.events import CustomerEvent, CustomerProfile, SubscriptionChanged, TicketOpened, TicketResolved, Usage
from tests.conftest import SettingsFactory
from tests.support.api_support import (
    NOW,
    VIP_EMAIL,
    VIP_ID,
    VIP_PHONE,
    api_settings,
    auth,
    live_server,
    populate,
    population,
)
from tests.support.helpers import hasher_of, read_snapshot, running_consumer, state_store, wait_until_caught_up

Client = AsyncTestClient  # type: ignore[type-arg]
N_EVENTS = len(population())


@pytest.fixture
async def api(settings: SettingsFactory) -> AsyncIterator[tuple[Settings, Client]]:
    s = api_settings(settings)
    await populate(s, population())
    async with AsyncTestClient(app=create_app(s)) as client:
        yield s, client


async def _classify(client: Client, customer_id: str) -> dict[str, object]:
    r = await client.post("/v1/classify", json={"customer": {"customer_id": customer_id}}, headers=auth("helpdesk"))
    assert r.status_code == 200, r.text
    result: dict[str, object] = r.json()
    return result


async def test_override_is_honoured_audited_and_expires(api: tuple[Settings, Client]) -> None:
    _, client = api
    assert (await _classify(client, VIP_ID))["tier"] == "VIP"
    body = {
        "tier": "Basic",
        "reason": "abusive behaviour, agreed with the account owner",
        "expires_in_hours": 1.5 / 3600,
    }
    r = await client.put(f"/v1/customers/{VIP_ID}/override", json=body, headers=auth("admin"))
    assert r.status_code == 200, r.text
    assert r.json()["tier"] == "Basic" and r.json()["by"] == "admin-app"
    d = await _classify(client, VIP_ID)
    assert d["tier"] == "Basic" and d["overridden"] is True and "Tier set by a person: Basic" in d["reasons"]  # type: ignore[operator]
    await asyncio.sleep(1.6)
    d = await _classify(client, VIP_ID)
    assert d["tier"] == "VIP" and d["overridden"] is False

    # remove: 204, then 404 when there is nothing left to remove; unknown customers cannot be overridden
    body["expires_in_hours"] = 1
    assert (await client.put(f"/v1/customers/{VIP_ID}/override", json=body, headers=auth("admin"))).status_code == 200
    assert (await client.delete(f"/v1/customers/{VIP_ID}/override", headers=auth("admin"))).status_code == 204
    r = await client.delete(f"/v1/customers/{VIP_ID}/override", headers=auth("admin"))
    assert r.status_code == 404 and "no override" in r.json()["detail"]
    r = await client.put("/v1/customers/nobody/override", json=body, headers=auth("admin"))
    assert r.status_code == 404
    r = await client.put(f"/v1/customers/{VIP_ID}/override", json={**body, "tier": "Gold"}, headers=auth("admin"))
    assert r.status_code == 400 and "tier" in r.json()["detail"]
    r = await client.put(f"/v1/customers/{VIP_ID}/override", json={"tier": "VIP", "reason": "x"}, headers=auth("admin"))
    assert r.status_code == 400 and "reason" in r.json()["detail"]

    # the admin actions are in the customer's audit trail, with the key that acted
    await client.app.state.services.audit.flush()
    view = (await client.get(f"/v1/customers/{VIP_ID}", headers=auth("ops"))).json()
    kinds = [e["kind"] for e in view["recent_decisions"]]
    assert "override_set" in kinds and "override_removed" in kinds and "decision_overridden" in kinds


async def test_customer_view_explains_every_score(api: tuple[Settings, Client]) -> None:
    _, client = api
    await _classify(client, VIP_ID)
    await client.app.state.services.audit.flush()
    r = await client.get(f"/v1/customers/{VIP_ID}", headers=auth("ops"))
    assert r.status_code == 200, r.text
    v = r.json()
    assert v["customer_known"] is True and v["tier"] == "VIP" and v["segment"] == "enterprise"
    assert v["scores"]["clv_score"] >= 90 and v["automated_decision_consent"] is True
    assert v["churn_factors"] and all(
        f["phrase"] and f["direction"] in ("raises", "lowers") for f in v["churn_factors"]
    )
    clv = v["clv"]
    assert clv["mrr"] == 9000.0 and clv["acquisition_cost"] == 2000.0 and clv["expected_months"] > 0
    recomputed = clv["monthly_margin"] * clv["expected_months"] - clv["acquisition_cost"]
    assert clv["clv"] == pytest.approx(recomputed, rel=1e-3)  # the inputs shown are rounded to cents
    assert v["recent_decisions"][0]["kind"] == "decision" and v["recent_decisions"][0]["tier"] == "VIP"
    # nothing in the view is a clear identifier
    assert VIP_PHONE not in r.text and "901820" not in r.text and VIP_EMAIL.lower() not in r.text.lower()
    r = await client.get("/v1/customers/nobody", headers=auth("ops"))
    assert r.status_code == 200 and r.json()["customer_known"] is False
    r = await client.get("/v1/customers/bad%20id", headers=auth("ops"))
    assert r.status_code == 400


async def test_outcome_becomes_an_event_the_consumer_applies(api: tuple[Settings, Client]) -> None:
    s, client = api
    d = await _classify(client, "S005")
    r = await client.post(
        f"/v1/decisions/{d['decision_id']}/outcome", json={"customer_id": "S005", "outcome": "renewed"},
        headers=auth("helpdesk"),
    )  # fmt: skip
    assert r.status_code == 202, r.text
    async with running_consumer(s) as worker:
        await wait_until_caught_up(worker, s, N_EVENTS + 1)
        snap = await read_snapshot(worker.store, "S005")
    assert snap is not None and snap.outcome == "renewed"
    r = await client.post(
        "/v1/decisions/x/outcome", json={"customer_id": "S005", "outcome": "won"}, headers=auth("helpdesk")
    )
    assert r.status_code == 400 and "outcome" in r.json()["detail"]


async def test_erasure_leaves_no_personal_key_behind(api: tuple[Settings, Client]) -> None:
    s, client = api
    h = hasher_of(s).customer_key(VIP_ID)
    phone_h = hasher_of(s).phone_key(VIP_PHONE)
    email_h = hasher_of(s).email_key(VIP_EMAIL)
    assert phone_h and email_h
    body = {"tier": "Premium", "reason": "before erasure", "expires_in_hours": 1}
    assert (await client.put(f"/v1/customers/{VIP_ID}/override", json=body, headers=auth("admin"))).status_code == 200
    await _classify(client, VIP_ID)
    await client.app.state.services.audit.flush()

    async with state_store(s) as store:
        before = {k.decode() for k in await store.client.keys(f"{s.redis.prefix}:*")}
        assert any(h in k for k in before) and any(phone_h in k for k in before) and any(email_h in k for k in before)
        # Keys.of_customer is the complete list: every key naming this customer is in it (erasure relies on it)
        personal = {k for k in before if h in k or phone_h in k or email_h in k}
        assert personal == set(store.keys.of_customer(h, [phone_h], [email_h])), personal
        hist_before = sum((await store.histogram()).values())

    r = await client.post(f"/v1/customers/{VIP_ID}/erasure", headers=auth("admin"))
    assert r.status_code == 202, r.text
    assert "tier override" in r.json()["will_remove"]
    assert (await client.post(f"/v1/customers/{VIP_ID}/erasure", headers=auth("ops"))).status_code == 403

    async with running_consumer(s) as worker:
        await wait_until_caught_up(worker, s, N_EVENTS + 1)
    async with state_store(s) as store:
        keys = {k.decode() for k in await store.client.keys(f"{s.redis.prefix}:*")}
        mine = sorted(k for k in keys if h in k or phone_h in k or email_h in k)
        # only the tombstone remains: it holds the erasure time, under a keyed hash
        assert mine == [store.keys.customer(h)], mine
        rec = await store.read_customer(h)
        assert rec.snapshot is not None and not rec.snapshot.customer_id and rec.snapshot.erased_at
        assert sum((await store.histogram()).values()) == hist_before - 1
        for key in keys:  # no value anywhere carries the clear identifiers
            if (await store.client.type(key)) == b"string":
                value = await store.client.get(key)
                assert b"901820" not in value and b"example.com" not in value.lower()
    d = await _classify(client, VIP_ID)
    assert d["customer_known"] is False


async def test_erasure_stays_erased_whatever_is_classified_or_queued_after_it(api: tuple[Settings, Client]) -> None:
    """Decisions about the customer keep coming after the erasure request: before the consumer
    applies it, after, and from another API worker whose audit queue still holds one. None of
    them may bring back a per-customer key."""
    s, client = api
    h = hasher_of(s).customer_key(VIP_ID)
    await _classify(client, VIP_ID)
    async with AsyncTestClient(app=create_app(s)) as other:  # a second worker process, in effect
        other.app.state.services.audit.linger_s = 3.0  # its decision waits in its queue a while
        await _classify(other, VIP_ID)
        r = await client.post(f"/v1/customers/{VIP_ID}/erasure", headers=auth("admin"))
        assert r.status_code == 202, r.text
        await _classify(client, VIP_ID)  # the consumer has not applied the erasure yet
        await client.app.state.services.audit.flush()
        async with running_consumer(s) as worker:
            await wait_until_caught_up(worker, s, N_EVENTS + 1)
        assert (await _classify(client, VIP_ID))["customer_known"] is False
        await client.app.state.services.audit.flush()
        await other.app.state.services.audit.flush(10.0)
    async with state_store(s) as store:
        left = [k for k in store.keys.of_customer(h) if await store.client.exists(k)]
        assert left == [store.keys.customer(h)], f"keys about the erased customer came back: {left}"


def test_unknown_customer_ids_leave_no_key_behind(settings: SettingsFactory, tmp_path: Path) -> None:
    """Random ids (a scan, a buggy client, an attacker) must not each leave a key: with
    ``noeviction`` that ends in a full Redis and a stalled consumer."""
    s = api_settings(settings, auth={"rate_per_s": 1_000_000_000.0, "burst": 1_000_000_000})
    asyncio.run(populate(s, population()))
    h = hasher_of(s).customer_key(VIP_ID)

    async def keys_and_decisions() -> tuple[int, int]:
        async with state_store(s) as store:
            n = len([k async for k in store.client.scan_iter(match=f"{s.redis.prefix}:*", count=1000)])
            return n, int(await store.client.xlen(store.keys.audit()))

    async def classify_unknown(base_url: str, n: int) -> None:
        async with httpx.AsyncClient(base_url=base_url, headers=auth("helpdesk"), timeout=10) as http:
            for _ in range(n // 100):
                bodies = [{"customer": {"customer_id": uuid.uuid4().hex}} for _ in range(100)]
                answers = await asyncio.gather(*(http.post("/v1/classify", json=b) for b in bodies))
                assert all(r.status_code == 200 and not r.json()["customer_known"] for r in answers)

    with live_server(s, tmp_path / "api.log") as client:
        assert client.post("/v1/classify", json={"customer": {"customer_id": VIP_ID}}, headers=auth("helpdesk")).json()[
            "customer_known"
        ]
        deadline = time.monotonic() + 10
        while (before := asyncio.run(keys_and_decisions()))[1] < 1:  # the global and the VIP's streams exist
            assert time.monotonic() < deadline
            time.sleep(0.05)
        t0 = time.monotonic()
        asyncio.run(classify_unknown(str(client.base_url), 10_000))
        took = time.monotonic() - t0
        deadline = time.monotonic() + 60
        while (after := asyncio.run(keys_and_decisions()))[1] < before[1] + 10_000:  # every decision is audited
            dropped = _metric(client.get("/metrics").text, "router_audit_dropped_total")
            assert time.monotonic() < deadline, f"audit trail stuck at {after[1]} decisions ({dropped} dropped)"
            time.sleep(0.2)
    print(f"\n[unknown-ids] 10000 classify in {took:.1f} s, keys {before[0]} -> {after[0]}")
    assert after[0] == before[0], f"10,000 unknown ids added {after[0] - before[0]} keys"

    async def ttl() -> int:
        async with state_store(s) as store:  # a known customer's stream is bounded in time too
            return int(await store.client.ttl(store.keys.customer_audit(h)))

    assert 0 < asyncio.run(ttl()) <= s.redis.audit_retention_days * 86_400


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_an_outcome_needs_a_decision_made_about_that_customer(api: tuple[Settings, Client]) -> None:
    s, client = api
    d = await _classify(client, "S005")
    stranger = await _classify(client, "ghost-customer-1")
    for decision_id, customer_id in [
        ("d-19ab0000000-abcdef-1", "S005"),  # no such decision
        (d["decision_id"], "S006"),  # someone else's decision
        (stranger["decision_id"], "ghost-customer-1"),  # a real decision, about nobody we know
        (d["decision_id"], "ghost-customer-2"),  # and a customer nobody knows
    ]:
        r = await client.post(
            f"/v1/decisions/{decision_id}/outcome", json={"customer_id": customer_id, "outcome": "churned"},
            headers=auth("helpdesk"),
        )  # fmt: skip
        assert r.status_code == 404, (decision_id, customer_id, r.status_code, r.text)
        assert r.json()["error"] == "not_found" and customer_id not in r.text
    r = await client.post(
        f"/v1/decisions/{d['decision_id']}/outcome", json={"customer_id": "S005", "outcome": "renewed"},
        headers=auth("helpdesk"),
    )  # fmt: skip
    assert r.status_code == 202, r.text
    async with running_consumer(s) as worker:
        await wait_until_caught_up(worker, s, N_EVENTS + 1)
        assert (await read_snapshot(worker.store, "S005")).outcome == "renewed"  # type: ignore[union-attr]
        assert (await read_snapshot(worker.store, "S006")).outcome is None  # type: ignore[union-attr]
        assert await read_snapshot(worker.store, "ghost-customer-2") is None
        assert (await worker.store.portfolio()).totals["customers"] == 41


async def test_portfolio_figures(api: tuple[Settings, Client]) -> None:
    _, client = api
    r = await client.get("/v1/portfolio", params={"days": 401}, headers=auth("ops"))
    assert r.status_code == 200, r.text
    p = r.json()
    expected_mrr = 9000.0 + sum(float(5 + i % 20) for i in range(40))
    assert p["customers"] == 41 and p["active_subscriptions"] == 41
    assert p["mrr"] == pytest.approx(expected_mrr) and p["arr"] == pytest.approx(12 * expected_mrr)
    assert p["new_customers"] == 41 and p["new_mrr"] == pytest.approx(expected_mrr)
    assert p["cancellations"] == 0 and p["customer_churn_rate"] == 0 and p["revenue_churn_rate"] == 0
    assert p["cac_total"] == pytest.approx(2000.0 + 40 * 50.0) and p["clv_to_cac"] > 0
    tiers = {t["tier"]: t["customers"] for t in p["tiers"]}
    assert sum(tiers.values()) == 41 and tiers["VIP"] >= 1 and tiers["Basic"] >= 1
    assert sum(b["customers"] for b in p["churn_risk"]) == 41
    assert len(p["churn_trend"]) == 1 and 0 <= p["churn_trend"][0]["mean_churn_risk"] <= 100
    r = await client.get("/v1/portfolio", params={"days": 0}, headers=auth("ops"))
    assert r.status_code == 400 and "days" in r.json()["detail"]
    assert (await client.get("/v1/portfolio", headers=auth("helpdesk"))).status_code == 403


async def test_policy_and_model_reload_without_restart(api: tuple[Settings, Client], tmp_path: Path) -> None:
    s, client = api
    old = (await _classify(client, VIP_ID))["policy_version"]
    good = tmp_path / "policy.toml"
    text = Path(s.policy.path).read_text()  # noqa: ASYNC240 - a small file, in a test
    text = text.replace(f'version = "{old}"', 'version = "2030-01-01.1"')
    good.write_text(text.replace("VIP = 90 ", "VIP = 99.9 ").replace("VIP = 90\n", "VIP = 99.9\n"))
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("Premium = 70", "Premium = 95"))

    r = await client.post("/v1/admin/policy/reload", json={"path": str(bad)}, headers=auth("admin"))
    assert r.status_code == 422 and "tiers.cutoffs" in r.json()["detail"] and old in r.json()["detail"]
    assert (await _classify(client, VIP_ID))["policy_version"] == old
    r = await client.post("/v1/admin/policy/reload", json={"path": str(good)}, headers=auth("admin"))
    assert r.status_code == 200 and r.json()["version"] == "2030-01-01.1" and r.json()["previous_version"] == old
    d = await _classify(client, VIP_ID)
    assert d["policy_version"] == "2030-01-01.1" and d["tier"] == "Premium"
    r = await client.post("/v1/admin/policy/reload", headers=auth("admin"))  # back to the configured file
    assert r.status_code == 200 and r.json()["version"] == old

    # model: a broken file is refused and the live model keeps answering
    broken = tmp_path / "churn-x.onnx"
    broken.write_bytes(b"not a model")
    shutil.copy(Path(s.model.path).with_suffix(".json"), broken.with_suffix(".json"))
    version = (await _classify(client, VIP_ID))["model_version"]
    r = await client.post("/v1/admin/model/reload", json={"path": str(broken)}, headers=auth("admin"))
    assert r.status_code == 422 and version in r.json()["detail"]
    assert (await _classify(client, VIP_ID))["model_version"] == version
    r = await client.post("/v1/admin/model/reload", headers=auth("admin"))
    assert r.status_code == 200 and r.json()["version"] == version
    assert (await client.post("/v1/admin/model/reload", headers=auth("ops"))).status_code == 403


def _needy(cid: str = "NEEDY") -> list[CustomerEvent]:
    """A large subscriber who calls support every few days; half the calls report their handling time."""
    start = NOW - timedelta(days=400)
    events: list[CustomerEvent] = [
        CustomerProfile(event_id=f"{cid}-p", customer_id=cid, occurred_at=start, segment="enterprise",
                        plan="enterprise", acquisition_cost=2000.0, company_size=800),
        SubscriptionChanged(event_id=f"{cid}-s", customer_id=cid, occurred_at=start, change="new",
                            plan="enterprise", mrr_delta=3000.0),
    ]  # fmt: skip
    for i in range(80):
        t = start + timedelta(days=5 * i)
        events += [
            TicketOpened(event_id=f"{cid}-o{i}", customer_id=cid, occurred_at=t, ticket_id=f"t{i}", channel="phone"),
            TicketResolved(event_id=f"{cid}-r{i}", customer_id=cid, occurred_at=t + timedelta(hours=3),
                           ticket_id=f"t{i}", sentiment=0.4, csat=4,
                           **({"handling_minutes": 120.0} if i % 2 else {})),  # type: ignore[arg-type]
            Usage(event_id=f"{cid}-u{i}", customer_id=cid, occurred_at=t + timedelta(hours=4), logins=30,
                  features_used=20),
        ]  # fmt: skip
    return events


async def test_cost_to_serve_lowers_clv_and_shows_in_the_view_the_reasons_and_the_portfolio(
    settings: SettingsFactory,
) -> None:
    s = api_settings(settings)
    await populate(s, population(20) + _needy())
    prices = load_policy(s.policy.path).service_prices
    async with state_store(s) as store:
        snap = await read_snapshot(store, "NEEDY")
    assert snap is not None and (snap.contacts, snap.timed_tickets, snap.handling_s) == (
        [0, 0, 0, 0, 0, 80],
        40,
        40 * 7200,
    )
    assert support_cost(snap, prices) == pytest.approx(40 * 9.0 + 80 * 42.0)  # 40 calls priced, 40 by the hour
    async with AsyncTestClient(app=create_app(s)) as client:
        v = (await client.get("/v1/customers/NEEDY", headers=auth("ops"))).json()
        clv = v["clv"]
        assert clv["support_contacts"] == 80 and clv["currency"] == "EUR"
        assert clv["support_cost_per_year"] == pytest.approx(12 * clv["support_cost_per_month"], abs=0.07)  # cents x 12
        assert clv["support_cost_per_year"] > 1000  # about 3,720 over 13 months of tenure
        net = (clv["monthly_margin"] - clv["support_cost_per_month"]) * clv["expected_months"] - clv["acquisition_cost"]
        assert clv["clv"] == pytest.approx(net, rel=1e-3) and "support cost per month" in clv["formula"]
        d = await _classify(client, "NEEDY")
        shown = f"{clv['support_cost_per_year']:,.0f}"
        assert f"Costly to serve: support cost {shown} EUR/yr" in d["reasons"], d["reasons"]  # type: ignore[operator]
        assert "fix_root_cause" in [a["code"] for a in d["next_best_actions"]]  # type: ignore[attr-defined, union-attr]
        p = (await client.get("/v1/portfolio", headers=auth("ops"))).json()
    # The portfolio counts each customer's cost once, in the tier of its current CLV: here NEEDY's alone.
    by_tier = {t["tier"]: t for t in p["service_cost"]}
    assert p["service_cost_per_year"] == pytest.approx(clv["support_cost_per_year"], rel=1e-3)
    assert by_tier[d["tier"]]["cost_per_year"] == pytest.approx(clv["support_cost_per_year"], rel=1e-3)  # type: ignore[index]
    assert sum(t["customers"] for t in p["service_cost"]) == 22  # 20 small, the big spender, NEEDY
