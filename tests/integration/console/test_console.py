"""The operations console over HTTP against a live server, a real Redis and a real broker.

Sessions, CSRF and scopes, every page, the policy what-if through its own simulation process,
versions followed by a second worker process. The same walk in a real browser, with
screenshots and accessibility checks, is ``test_browser_console.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.settings import Settings, to_env
from tests.conftest import run_sync
from tests.support.api_support import KEYS, VIP_ID, VIP_PHONE, auth, live_server, module_settings, populate, population
from tests.support.helpers import running_consumer, state_store

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
DRAFT_VIP_20 = ("VIP = 90", "VIP = 80"), ('version = "2026-11-25.1"', 'version = "2026-12-01.1"')


@pytest.fixture(scope="module")
def api_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("console") / "api.log"


@pytest.fixture(scope="module")
def server(broker: str, redis_server: Any, api_log: Path) -> Iterator[Settings]:
    """One API process (two workers) for the module, on a populated Redis of its own prefix."""
    s = module_settings(broker, redis_server.url, "console", api={"workers": 2}, redis={"timeout_ms": 1000})
    asyncio.run(populate(s, population()))
    with live_server(s, api_log):
        yield s


def _client(s: Settings) -> httpx.Client:
    return httpx.Client(base_url=f"http://{s.api.host}:{s.api.port}", timeout=10)


def sign_in(client: httpx.Client, scope: str) -> str:
    """Sign in with the key of ``scope``; the session's CSRF token."""
    form = client.get("/console/sign-in")
    token = _CSRF.search(form.text).group(1)  # type: ignore[union-attr]
    landed = client.post("/console/sign-in", data={"csrf": token, "api_key": KEYS[scope]}, follow_redirects=True)
    assert landed.status_code == 200, landed.text[:500]
    return _CSRF.search(landed.text).group(1)  # type: ignore[union-attr]


def default_policy_text() -> str:
    return (Path(__file__).resolve().parents[3] / "router" / "policy" / "default.toml").read_text()


def test_sign_in_sets_a_strict_httponly_session_cookie_and_scopes_decide(server: Settings) -> None:
    with _client(server) as c:
        assert c.get("/console/portfolio").headers["location"] == "/console/sign-in"
        assert c.get("/console/").headers["location"] == "/console/sign-in"
        form = c.get("/console/sign-in")
        token = _CSRF.search(form.text).group(1)  # type: ignore[union-attr]
        bad = c.post("/console/sign-in", data={"csrf": token, "api_key": "not-a-key-at-all-0000"})
        assert bad.status_code == 401 and "unknown API key" in bad.text
        token = _CSRF.search(bad.text).group(1)  # type: ignore[union-attr]
        ok = c.post("/console/sign-in", data={"csrf": token, "api_key": KEYS["ops"]})
        assert ok.status_code == 303
        cookie = next(v for k, v in ok.headers.multi_items() if k == "set-cookie" and v.startswith("router_console="))
        low = cookie.lower()
        assert "httponly" in low and "samesite=strict" in low and "max-age=28800" in low and "path=/console" in low
        assert "secure" not in low  # plain HTTP here; over TLS the cookie is Secure
        page = c.get("/console/portfolio")
        assert page.status_code == 200 and "MRR" in page.text and "Tier mix" in page.text
        assert "default-src 'none'" in page.headers["content-security-policy"]
        # ops may look but not set overrides or apply policies
        csrf = _CSRF.search(page.text).group(1)  # type: ignore[union-attr]
        refused = c.post(
            "/console/customer/override",
            data={"csrf": csrf, "customer_id": VIP_ID, "tier": "Basic", "reason": "ops should not", "hours": "1"},
        )
        assert refused.status_code == 403
    with _client(server) as c:
        sign_in(c, "helpdesk")
        assert c.get("/console/").headers["location"] == "/console/decisions"
        assert c.get("/console/decisions").status_code == 200
        assert c.get("/console/portfolio").status_code == 403
        # a key without any console scope cannot sign in
    with _client(server) as c:
        form = c.get("/console/sign-in")
        token = _CSRF.search(form.text).group(1)  # type: ignore[union-attr]
        assert c.post("/console/sign-in", data={"csrf": token, "api_key": KEYS["telephony"]}).status_code == 403


def test_forged_posts_are_refused(server: Settings) -> None:
    with _client(server) as c:
        csrf = sign_in(c, "admin")
        data = {"customer_id": VIP_ID, "tier": "Basic", "reason": "forged", "hours": "1"}
        assert c.post("/console/customer/override", data=data).status_code == 403  # no token
        assert c.post("/console/customer/override", data={**data, "csrf": "x" * 43}).status_code == 403
        other_site = c.post(
            "/console/customer/override", data={**data, "csrf": csrf}, headers={"Origin": "https://evil.example"}
        )
        assert other_site.status_code == 403
        # a sign-in form posted without its own cookie token (login CSRF) is refused too
    with _client(server) as c:
        assert c.post("/console/sign-in", data={"csrf": "guess", "api_key": KEYS["admin"]}).status_code == 403
    with _client(server) as c:
        view = c.post("/console/customer", data={"csrf": sign_in(c, "admin"), "kind": "id", "value": VIP_ID})
        assert "Override set" not in view.text and "None: the tier follows the CLV score." in view.text


def test_customer_page_override_reaches_classify_and_export_has_everything(server: Settings, api_log: Path) -> None:
    with _client(server) as c, _client(server) as api:
        csrf = sign_in(c, "admin")
        view = c.post("/console/customer", data={"csrf": csrf, "kind": "phone", "value": VIP_PHONE})
        assert view.status_code == 200 and '<span class="tier VIP">VIP</span>' in view.text
        assert "CLV score" in view.text and "Churn risk" in view.text and "expected months" in view.text
        assert "901820" not in view.text  # the number looked up is not written back
        done = c.post(
            "/console/customer/override",
            data={"csrf": csrf, "customer_id": VIP_ID, "tier": "Premium", "reason": "key account review", "hours": "2"},
        )
        assert "Override set: Premium" in done.text and "set by <strong>admin-app</strong>" in done.text
        decision = api.post("/v1/classify", json={"customer": {"customer_id": VIP_ID}}, headers=auth("helpdesk")).json()
        assert decision["tier"] == "Premium" and decision["overridden"] is True
        time.sleep(0.3)  # the audit writer lingers a few milliseconds
        exported = c.post("/console/customer/export", data={"csrf": csrf, "customer_id": VIP_ID})
        assert exported.headers["content-disposition"].startswith("attachment")
        body = exported.json()
        assert body["customer_id"] == VIP_ID and body["override"]["tier"] == "Premium"
        assert body["stored_state"]["customer_id"] == VIP_ID and body["view"]["scores"]["clv_score"] > 90
        assert any(r.get("kind") == "decision" for r in body["audit_trail"])
        assert "901820" not in exported.text  # phone numbers only as keyed hashes
        cleared = c.post(
            "/console/customer/override/clear", data={"csrf": csrf, "customer_id": VIP_ID, "reason": "review done"}
        )
        assert "Override removed." in cleared.text
        time.sleep(0.2)
        history = c.post("/console/customer", data={"csrf": csrf, "kind": "id", "value": VIP_ID}).text
        assert "override_removed" in history and "review done" in history and "override_set" in history
        bad_phone = c.post("/console/customer", data={"csrf": csrf, "kind": "phone", "value": "not a number"})
        assert bad_phone.status_code == 400 and "not a number" not in bad_phone.text
        unknown = c.post("/console/customer", data={"csrf": csrf, "kind": "email", "value": "nobody@example.org"})
        assert unknown.status_code == 404 and "nobody@" not in unknown.text
    logged = api_log.read_text()
    assert "901820" not in logged and "nobody@" not in logged and "not a number" not in logged


def test_decision_search_by_id_customer_and_time(server: Settings) -> None:
    with _client(server) as c, _client(server) as api:
        decided = api.post(
            "/v1/classify", json={"customer": {"customer_id": "S001"}, "category": "billing"}, headers=auth("helpdesk")
        ).json()
        time.sleep(0.3)  # the audit writer lingers a few milliseconds
        csrf = sign_in(c, "helpdesk")
        by_id = c.post(
            "/console/decisions", data={"csrf": csrf, "by": "decision", "decision_id": decided["decision_id"]}
        )
        assert decided["decision_id"] in by_id.text and decided["reasons"][0] in by_id.text
        by_customer = c.post("/console/decisions", data={"csrf": csrf, "by": "customer", "kind": "id", "value": "S001"})
        assert decided["decision_id"] in by_customer.text
        now = time.gmtime()
        start = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - 600))
        end = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() + 120))
        by_time = c.post(
            "/console/decisions", data={"csrf": csrf, "by": "time", "start": start, "end": end, "tier": decided["tier"]}
        )
        assert decided["decision_id"] in by_time.text and now
        other = "VIP" if decided["tier"] != "VIP" else "Basic"
        none = c.post(
            "/console/decisions", data={"csrf": csrf, "by": "time", "start": start, "end": end, "tier": other}
        )
        assert decided["decision_id"] not in none.text


def test_cli_twin_validates_and_simulates_a_draft(server: Settings, tmp_path: Path) -> None:
    """``router policy validate|simulate DRAFT``: the same loader messages, the same simulation."""
    env = {**os.environ, **to_env(server)}
    bad = tmp_path / "bad.toml"
    bad.write_text(default_policy_text().replace("VIP = 90", "VIP = 60"))
    checked = subprocess.run(
        [sys.executable, "-m", "router", "policy", "validate", str(bad)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 2 and "tiers.cutoffs: VIP cut-off 60 must be above Premium 70" in checked.stderr
    draft = tmp_path / "draft.toml"
    text = default_policy_text()
    for old, new in DRAFT_VIP_20:
        text = text.replace(old, new)
    draft.write_text(text)
    ran = subprocess.run(
        [sys.executable, "-m", "router", "policy", "simulate", str(draft), "--days", "1", "--capacity", "5"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "draft 2026-12-01.1 against 2026-11-25.1 in force" in ran.stdout
    assert "customer base: 41 customers" in ran.stdout and "Premium -> VIP: 4" in ran.stdout
    sampled = subprocess.run(
        [sys.executable, "-m", "router", "policy", "simulate", str(draft), "--sample", "0.5", "--json"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    report = json.loads(sampled.stdout)
    assert 5 < report["base"]["customers"] < 36 and report["base"]["sample"] == 0.5
    examples = [x for t in report["base"]["transitions"] for x in t["examples"]]
    assert all(x.startswith("S") or x == VIP_ID for x in examples)  # customer ids, not keyed hashes


def _scans(url: str) -> int:
    import redis

    with redis.Redis.from_url(url) as r:
        return int(r.info("commandstats").get("cmdstat_scan", {}).get("calls", 0))


def test_a_simulation_reads_the_customer_base_from_the_replica_it_is_given(server: Settings, tmp_path: Path) -> None:
    """``ROUTER_CONSOLE_SIMULATION_REDIS_URL``: the scan runs on a replica, not on the Redis that serves decisions."""
    import redis

    from router.devstack.infra import start_redis

    replica = start_redis(dir=tmp_path / "replica")
    try:
        primary = redis.Redis.from_url(server.redis.url)
        host, port = (
            primary.connection_pool.connection_kwargs["host"],
            primary.connection_pool.connection_kwargs["port"],
        )
        with redis.Redis.from_url(replica.url) as r:
            r.execute_command("REPLICAOF", host, port)
            deadline = time.monotonic() + 60
            while r.info("replication").get("master_link_status") != "up" or r.info("replication").get(
                "master_sync_in_progress"
            ):
                assert time.monotonic() < deadline, "replica did not sync"
                time.sleep(0.1)
            while r.info("replication")["slave_repl_offset"] < primary.info("replication")["master_repl_offset"]:
                assert time.monotonic() < deadline, "replica did not catch up"
                time.sleep(0.1)
        primary.close()
        draft = tmp_path / "draft.toml"
        text = default_policy_text()
        for old, new in DRAFT_VIP_20:
            text = text.replace(old, new)
        draft.write_text(text)
        env = {**os.environ, **to_env(server), "ROUTER_CONSOLE_SIMULATION_REDIS_URL": replica.url}
        on_primary, on_replica = _scans(server.redis.url), _scans(replica.url)
        ran = subprocess.run(
            [sys.executable, "-m", "router", "policy", "simulate", str(draft), "--days", "1", "--capacity", "5"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr[-2000:]
        assert "customer base: 41 customers" in ran.stdout and "Premium -> VIP: 4" in ran.stdout
        assert _scans(server.redis.url) == on_primary, "the simulation scanned the primary"
        assert _scans(replica.url) > on_replica
    finally:
        replica.close()


def _simulate(c: httpx.Client, csrf: str, draft: str) -> str:
    started = c.post(
        "/console/policy", data={"csrf": csrf, "draft": draft, "action": "simulate", "days": "1", "capacity": "5"}
    )
    assert started.status_code == 303, started.text[-800:]
    url = started.headers["location"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        page = c.get(url)
        if "Finished" in c.get(url + "/progress").text:
            return url
        assert page.status_code == 200
        time.sleep(0.5)
    raise AssertionError("simulation did not finish: " + c.get(url).text[-1500:])


def test_policy_what_if_validates_simulates_applies_and_rolls_back(server: Settings) -> None:
    text = default_policy_text()
    draft = text
    for old, new in DRAFT_VIP_20:
        draft = draft.replace(old, new)
    with _client(server) as c, _client(server) as api:
        csrf = sign_in(c, "ops")
        broken = c.post(
            "/console/policy", data={"csrf": csrf, "draft": text.replace("VIP = 90", "VIP = 60"), "action": "validate"}
        )
        assert broken.status_code == 422 and "tiers.cutoffs: VIP cut-off 60 must be above Premium 70" in broken.text
        uploaded = c.post(
            "/console/policy", data={"csrf": csrf, "action": "validate", "draft": ""},
            files={"upload": ("draft.toml", draft.encode(), "application/toml")},
        )  # fmt: skip
        assert uploaded.status_code == 200 and "The draft is valid (policy 2026-12-01.1)." in uploaded.text
        assert "VIP = 80" in uploaded.text  # the uploaded text is in the editor now
        url = _simulate(c, csrf, draft)
        report = c.get(url).text
        assert "Premium</td><td>VIP</td>" in report and "Apply policy" not in report  # ops may not apply
        job = url.rsplit("/", 1)[1]
        assert c.post(f"{url}/apply", data={"csrf": csrf}).status_code == 403
    with _client(server) as c, _client(server) as api:
        csrf = sign_in(c, "admin")
        applied = c.post(f"/console/policy/simulations/{job}/apply", data={"csrf": csrf}, follow_redirects=True)
        assert applied.status_code == 200 and "2026-12-01.1" in applied.text and "in force" in applied.text
        assert "+VIP = 80" in applied.text and "-VIP = 90" in applied.text
        assert versions_answered(api) == {"2026-12-01.1"}  # both workers, within their poll interval
        number = int(str(applied.url).rsplit("/", 1)[1])
        assert number == 2  # version 1 keeps the policy file that was in force before
        # the state consumers take cost-to-serve prices from the stored version the console announced
        announced, sha = run_sync(_consumer_follows_announced_policy(server))
        assert announced.path == f"version:{number}" and announced.version == "2026-12-01.1" and sha == announced.sha256
        again = c.post(f"/console/policy/simulations/{job}/apply", data={"csrf": csrf})
        assert again.status_code == 409  # applied since it was simulated
        history = c.get("/console/policy").text
        assert '/console/policy/versions/2">2</a> (in force)' in history and "admin-app" in history
        assert "the policy file in force before the first change" in history
        rolled = c.post("/console/policy/versions/1/rollback", data={"csrf": csrf}, follow_redirects=True)
        assert rolled.status_code == 200 and "rollback to version 1" in rolled.text and "-VIP = 80" in rolled.text
        assert versions_answered(api) == {"2026-11-25.1"}


async def _consumer_follows_announced_policy(s: Settings) -> tuple[Any, str]:
    async with state_store(s) as store:
        announced = await store.announced("policy")
    assert announced is not None, "the console's apply announced nothing"
    async with running_consumer(s) as worker:
        await worker.load_prices(announced.path, announced.sha256)
        return announced, worker.policy_sha


def versions_answered(api: httpx.Client) -> set[str]:
    """Policy versions in the answers of both API workers, once a poll interval has passed."""
    time.sleep(1.5)
    seen = set()
    for _ in range(20):  # uvicorn spreads new connections over its workers
        with httpx.Client(base_url=str(api.base_url), timeout=5) as fresh:
            answer = fresh.post("/v1/classify", json={"customer": {"customer_id": VIP_ID}}, headers=auth("helpdesk"))
            seen.add(answer.json()["policy_version"])
    return seen


def test_erasure_needs_the_typed_id_and_shows_its_progress(server: Settings) -> None:
    victim = "S039"
    with _client(server) as c:
        csrf = sign_in(c, "admin")
        wrong = c.post("/console/customer/erasure", data={"csrf": csrf, "customer_id": victim, "confirm": "S03"})
        assert wrong.status_code == 400 and "type the customer id exactly" in wrong.text
        started = c.post("/console/customer/erasure", data={"csrf": csrf, "customer_id": victim, "confirm": victim})
        assert started.status_code == 303
        url = started.headers["location"]
        assert victim not in url  # the event id carries a keyed hash, not the id
        page = c.get(url).text
        assert page.count('class="done"') == 2 and page.count('class="pending"') == 1 and "data-poll" in page
        # another session cannot follow this erasure
        with _client(server) as other:
            sign_in(other, "admin")
            assert other.get(url).status_code == 404
        asyncio.run(_consume_until_erased(server, victim))
        fragment = c.get(url + "/progress").text
        assert fragment.count('class="done"') == 3 and "data-done" in fragment
        gone = c.post("/console/customer", data={"csrf": csrf, "kind": "id", "value": victim})
        assert "holds no state for this customer id" in gone.text


async def _consume_until_erased(s: Settings, customer_id: str) -> None:
    async with running_consumer(s), state_store(s) as store:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            record = await store.read_customer(store.customer_key(customer_id))
            if record.snapshot is not None and not record.snapshot.customer_id:
                return
            await asyncio.sleep(0.2)
    raise AssertionError("the consumer did not apply the erasure")
