"""Model and policy files that are missing, corrupt or invalid, at start and at reload.

On a real ``router serve`` subprocess:

* model missing or corrupt at start: the API starts, answers rule-based decisions marked
  ``degraded: model_unavailable`` (200, never 5xx), readiness says "not loaded" and
  ``router_model_info`` shows no model; a good file plus a reload brings it back;
* a broken model at reload (missing, truncated, garbage, card not matching, a directory):
  422 naming the problem, the last good model stays in force: decisions, readiness and
  ``router_model_info`` all keep saying ``churn-v1``; the same through SIGHUP;
* an invalid policy at reload (TOML syntax, bad cut-offs, unknown calendar, negative
  hours, missing version, not a file, binary): 422 with the loader's precise message, the
  old policy version stays in decisions, readiness and ``router_policy_info``; a valid new
  policy then replaces it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec

from router.core.reducer import fold_all
from router.devstack.infra import ManagedProcess, free_port
from router.settings import ModelSettings, PolicySettings, Settings, to_env
from tests.conftest import SettingsFactory, run_sync
from tests.integration.ingest.test_faults_consumer import stored_offsets
from tests.support.api_support import VIP_ID, api_settings, auth, populate, population
from tests.support.helpers import hasher_of, produce, state_store

GOOD_MODEL = Path(ModelSettings().path)
GOOD_POLICY = Path(PolicySettings().path)
CLASSIFY = {"customer": {"customer_id": VIP_ID}, "channel": "phone", "category": "technical"}


@contextlib.contextmanager
def serve(s: Settings, log: Path) -> Iterator[tuple[httpx.Client, ManagedProcess]]:
    """``router serve`` as a subprocess; yields once it is alive (ready or not)."""
    env = {**os.environ, **to_env(s)}
    proc = ManagedProcess("api", [sys.executable, "-m", "router", "serve"], log_path=log, env=env)
    client = httpx.Client(base_url=f"http://{s.api.host}:{s.api.port}", timeout=5)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.TransportError):
                if client.get("/health/live").status_code == 200:
                    break
            assert proc.running and time.monotonic() < deadline, f"API did not start:\n{proc.tail(40)}"
            time.sleep(0.1)
        yield client, proc
    finally:
        client.close()
        proc.stop(10)


def _model_info(client: httpx.Client) -> dict[str, float]:
    """``version -> value`` of ``router_model_info`` in the API's /metrics."""
    text = client.get("/metrics").text
    return {
        m[0]: float(m[1]) for m in re.findall(r'^router_model_info\{[^}]*version="([^"]*)"[^}]*\} (\S+)$', text, re.M)
    }


def _policy_info(client: httpx.Client) -> dict[str, float]:
    text = client.get("/metrics").text
    return {m[0]: float(m[1]) for m in re.findall(r'^router_policy_info\{version="([^"]*)"\} (\S+)$', text, re.M)}


def _degraded_count(client: httpx.Client, cause: str) -> float:
    text = client.get("/metrics").text
    m = re.search(rf'^router_degraded_decisions_total\{{cause="{cause}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def _copy_model(dst: Path) -> Path:
    """A copy of the good model and its card under ``dst`` (returns the .onnx path)."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(GOOD_MODEL, dst / GOOD_MODEL.name)
    shutil.copy(GOOD_MODEL.with_suffix(".json"), dst / GOOD_MODEL.with_suffix(".json").name)
    return dst / GOOD_MODEL.name


def _broken_models(root: Path) -> dict[str, tuple[Path, str]]:
    """Name -> (.onnx path, fragment the error message must contain)."""
    out: dict[str, tuple[Path, str]] = {}
    missing = root / "missing" / "churn-v9.onnx"
    out["missing"] = (missing, "cannot read model file")

    garbage = _copy_model(root / "garbage")
    garbage.write_bytes(b"\x00not an onnx model\xff" * 100)
    out["garbage, card sha mismatch"] = (garbage, "does not match its card")

    truncated = _copy_model(root / "truncated")
    truncated.write_bytes(GOOD_MODEL.read_bytes()[:700])
    card = msgspec.json.decode(truncated.with_suffix(".json").read_bytes())
    card["onnx"]["sha256"] = hashlib.sha256(
        truncated.read_bytes()
    ).hexdigest()  # so the loader gets as far as ONNX Runtime
    truncated.with_suffix(".json").write_bytes(msgspec.json.encode(card))
    out["truncated onnx"] = (truncated, "not a loadable ONNX model")

    unsigned = _copy_model(root / "no-sha")
    card = msgspec.json.decode(unsigned.with_suffix(".json").read_bytes())
    del card["onnx"]["sha256"]
    unsigned.with_suffix(".json").write_bytes(msgspec.json.encode(card))
    out["card without the file's sha256"] = (unsigned, "lacks onnx.sha256")

    no_card = _copy_model(root / "no-card")
    no_card.with_suffix(".json").unlink()
    out["card missing"] = (no_card, "cannot read model card")

    bad_card = _copy_model(root / "bad-card")
    bad_card.with_suffix(".json").write_bytes(b"{ this is not json")
    out["card not JSON"] = (bad_card, "not valid JSON")

    other = _copy_model(root / "other-features")
    card = msgspec.json.decode(other.with_suffix(".json").read_bytes())
    card["feature_names"] = list(reversed(card["feature_names"]))
    other.with_suffix(".json").write_bytes(msgspec.json.encode(card))
    out["card with other features"] = (other, "other features")

    odd = _copy_model(root / "odd-card")
    card = msgspec.json.decode(odd.with_suffix(".json").read_bytes())
    card["onnx"] = "sha256 of something"  # a card field of the wrong JSON type
    odd.with_suffix(".json").write_bytes(msgspec.json.encode(card))
    out["card field of the wrong type"] = (odd, "card")

    out["a directory"] = (root, "cannot read model file")
    return out


def test_model_missing_or_corrupt_at_start_degrades_and_reload_recovers(
    settings: SettingsFactory, tmp_path: Path
) -> None:
    model_dir = tmp_path / "model"
    configured = _copy_model(model_dir)
    configured.write_bytes(b"corrupt" * 1000)  # the configured file is broken when the service starts
    s = api_settings(settings, model={"path": str(configured)})
    run_sync(populate(s, population()))
    with serve(s, tmp_path / "api.log") as (client, _):
        ready = client.get("/health/ready")
        assert ready.status_code == 503 and ready.json()["checks"]["model"] == "not loaded", ready.text
        assert not any(v == 1 for v in _model_info(client).values())
        for _ in range(5):
            r = client.post("/v1/classify", json=CLASSIFY, headers=auth("helpdesk"))
            assert r.status_code == 200, r.text
            d = r.json()
            assert d["degraded"] is True and d["degraded_cause"] == "model_unavailable"
            assert d["model_version"] == "none" and d["customer_known"] is True
        assert _degraded_count(client, "model_unavailable") >= 5

        # reload of a still-broken file: 422, still the rule-based fallback
        r = client.post("/v1/admin/model/reload", headers=auth("admin"))
        assert r.status_code == 422 and "no model stays in force" in r.json()["detail"], r.text

        _copy_model(model_dir)  # operations put a good file in place and reload
        r = client.post("/v1/admin/model/reload", headers=auth("admin"))
        assert r.status_code == 200, r.text
        assert r.json()["version"] == "churn-v1" and r.json()["previous_version"] == "none"
        assert client.get("/health/ready").status_code == 200
        assert _model_info(client).get("churn-v1") == 1
        d = client.post("/v1/classify", json=CLASSIFY, headers=auth("helpdesk")).json()
        assert d["degraded"] is False and d["model_version"] == "churn-v1"
    assert "churn model not loaded" in (tmp_path / "api.log").read_text()


def test_model_missing_at_start_still_serves(settings: SettingsFactory, tmp_path: Path) -> None:
    s = api_settings(settings, model={"path": str(tmp_path / "nowhere" / "churn-v1.onnx")})
    with serve(s, tmp_path / "api.log") as (client, _):
        ready = client.get("/health/ready")
        assert ready.status_code == 503 and ready.json()["checks"]["model"] == "not loaded"
        r = client.post("/v1/classify", json={"customer": {"customer_id": "nobody"}}, headers=auth("helpdesk"))
        assert r.status_code == 200 and r.json()["model_version"] == "none"


def test_broken_model_at_reload_keeps_the_last_good_one(settings: SettingsFactory, tmp_path: Path) -> None:
    configured = _copy_model(tmp_path / "live")
    s = api_settings(settings, model={"path": str(configured)})
    run_sync(populate(s, population()))
    broken = _broken_models(tmp_path / "broken")
    with serve(s, tmp_path / "api.log") as (client, proc):
        assert client.get("/health/ready").status_code == 200
        before = client.post("/v1/classify", json=CLASSIFY, headers=auth("helpdesk")).json()
        assert before["degraded"] is False and before["model_version"] == "churn-v1"
        problems = []
        for name, (path, fragment) in broken.items():
            r = client.post("/v1/admin/model/reload", json={"path": str(path)}, headers=auth("admin"))
            if r.status_code != 422 or fragment not in r.json().get("detail", ""):
                problems.append(f"{name}: {r.status_code} {r.text[:300]}")
                continue
            assert "churn-v1 stays in force" in r.json()["detail"]
        # and through SIGHUP, with the configured file itself corrupted
        configured.write_bytes(b"overwritten by a bad deploy")
        os.kill(proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "SIGHUP: model not loaded" not in proc.log_path.read_text():
            assert time.monotonic() < deadline, f"no SIGHUP reload logged:\n{proc.tail(20)}"
            time.sleep(0.1)

        ready = client.get("/health/ready")
        assert ready.status_code == 200 and ready.json()["checks"]["model"] == "loaded churn-v1", ready.text
        assert _model_info(client).get("churn-v1") == 1
        after = client.post("/v1/classify", json=CLASSIFY, headers=auth("helpdesk")).json()
        assert after["degraded"] is False and after["model_version"] == "churn-v1"
        assert after["scores"]["churn_risk"] == before["scores"]["churn_risk"]
        assert proc.running
    assert problems == [], "broken models not rejected with a precise 422:\n" + "\n".join(problems)


def _policies(root: Path) -> dict[str, tuple[Path, str]]:
    """Name -> (policy path, fragment the 422 detail must contain)."""
    root.mkdir(parents=True, exist_ok=True)
    src = GOOD_POLICY.read_text()
    variants = {
        "toml syntax": (src.replace('unknown = "Standard"', 'unknown = "Standard'), "not valid TOML"),
        "cut-offs out of order": (src.replace("VIP = 90 ", "VIP = 60 "), "tiers.cutoffs: VIP cut-off 60"),
        "negative hours": (src.replace("normal = { hours = 2, ", "normal = { hours = -2, "), "sla.VIP.normal.hours"),
        "unknown tier": (src.replace('unknown = "Standard"', 'unknown = "Gold"'), "tiers.unknown"),
        "unknown calendar": (
            src.replace('calendar = "24x7" }\nhigh', 'calendar = "nowhere" }\nhigh', 1),
            "unknown calendar 'nowhere'",
        ),
        "no version": (re.sub(r"(?m)^version = .*$", "", src), "version"),
        "empty file": ("", "version"),
    }
    out: dict[str, tuple[Path, str]] = {}
    for i, (name, (text, fragment)) in enumerate(variants.items()):
        path = root / f"bad-{i}.toml"
        path.write_text(text)
        assert text != src or name == "empty file"
        out[name] = (path, fragment)
    out["missing file"] = (root / "absent.toml", "cannot read policy file")
    out["a directory"] = (root, "cannot read policy file")
    binary = root / "binary.toml"
    binary.write_bytes(b'version = "x"\n\xd0\xff\xfe\x00 binary')
    out["not UTF-8"] = (binary, str(binary))
    return out


def test_invalid_policy_at_reload_is_rejected_precisely_and_the_old_one_stays(
    settings: SettingsFactory, tmp_path: Path
) -> None:
    configured = tmp_path / "policy.toml"
    shutil.copy(GOOD_POLICY, configured)
    s = api_settings(settings, policy={"path": str(configured)})
    old_version = re.search(r'(?m)^version = "([^"]+)"', GOOD_POLICY.read_text())
    assert old_version is not None
    old = old_version.group(1)
    with serve(s, tmp_path / "api.log") as (client, proc):
        problems = []
        for name, (path, fragment) in _policies(tmp_path / "bad").items():
            r = client.post("/v1/admin/policy/reload", json={"path": str(path)}, headers=auth("admin"))
            detail = (
                r.json().get("detail", "") if r.headers.get("content-type", "").startswith("application/json") else ""
            )
            if r.status_code != 422 or fragment not in detail or f"{old} stays in force" not in detail:
                problems.append(f"{name}: {r.status_code} {r.text[:300]}")
        # the configured file broken, reloaded by SIGHUP: logged, old policy stays
        configured.write_text("version = ")
        os.kill(proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "SIGHUP: policy not loaded" not in proc.log_path.read_text():
            assert time.monotonic() < deadline, f"no SIGHUP policy reload logged:\n{proc.tail(20)}"
            time.sleep(0.1)
        d = client.post("/v1/classify", json=CLASSIFY, headers=auth("helpdesk"))
        assert d.status_code == 200 and d.json()["policy_version"] == old
        assert client.get("/health/ready").json()["checks"]["policy"] == f"loaded {old}"
        assert _policy_info(client).get(old) == 1

        # a valid new version replaces it, without a restart
        configured.write_text(GOOD_POLICY.read_text().replace(f'version = "{old}"', 'version = "2099-01-01.1"'))
        r = client.post("/v1/admin/policy/reload", headers=auth("admin"))
        assert r.status_code == 200 and r.json() == {
            "kind": "policy",
            "version": "2099-01-01.1",
            "previous_version": old,
            "path": str(configured),
        }
        assert client.post("/v1/classify", json=CLASSIFY, headers=auth("helpdesk")).json()["policy_version"] == (
            "2099-01-01.1"
        )
        assert _policy_info(client) == {old: 0, "2099-01-01.1": 1}
        assert proc.running
    assert problems == [], "invalid policies not rejected with a precise 422:\n" + "\n".join(problems)


def test_reload_needs_the_admin_scope(settings: SettingsFactory, tmp_path: Path) -> None:
    s = api_settings(settings)
    with serve(s, tmp_path / "api.log") as (client, _):
        for kind in ("model", "policy"):
            for headers, status in (
                (auth("ops"), 403),
                ({}, 401),
                ({"X-API-Key": "admin-secret-0123456789abcdeX"}, 401),
            ):
                r = client.post(f"/v1/admin/{kind}/reload", headers=headers)
                assert r.status_code == status, r.text


def test_consumer_with_a_corrupt_model_keeps_folding_and_says_so(settings: SettingsFactory, tmp_path: Path) -> None:
    """The consumer starts without a usable model: state stays exact, and operations can see why scores stall."""
    broken = _copy_model(tmp_path / "model")
    broken.write_bytes(b"not onnx")
    s = settings(model={"path": str(broken)}, kafka={"partitions": 1})
    events = population(3)
    run_sync(produce(s, events))
    health = free_port()
    env = {**os.environ, **to_env(s), "ROUTER_STREAM_HEALTH_PORT": str(health)}
    consumer = ManagedProcess(
        "consumer", [sys.executable, "-m", "router", "consume"], log_path=tmp_path / "consumer.log", env=env
    )
    try:
        deadline = time.monotonic() + 40
        while sum(run_sync(stored_offsets(s)).values()) < len(events):
            assert consumer.running and time.monotonic() < deadline, consumer.tail(30)
            time.sleep(0.2)
        ready = httpx.get(f"http://127.0.0.1:{health}/health/ready", timeout=5)
        metrics_text = httpx.get(f"http://127.0.0.1:{health}/metrics", timeout=5).text
    finally:
        consumer.stop(10)
    assert "churn model unavailable" in consumer.log_path.read_text()

    async def snapshots_exact() -> list[str]:
        hasher = hasher_of(s)
        by_customer: dict[str, list[Any]] = {}
        for e in events:
            by_customer.setdefault(e.customer_id, []).append(e)
        async with state_store(s) as store:
            wrong = []
            for cid, evs in by_customer.items():
                rec = await store.read_customer(store.customer_key(cid))
                if rec.snapshot != fold_all(evs, lateness_s=s.stream.lateness_s, hasher=hasher):
                    wrong.append(cid)
            return wrong

    assert run_sync(snapshots_exact()) == []
    # ready (it folds events), but readiness and metrics say the churn model is missing
    assert ready.status_code == 200 and "model" in ready.text, ready.text
    assert not re.search(r"^router_model_info\{[^}]*\} 1\.0$", metrics_text, re.M), "a model is reported as in use"
    assert re.search(r"^router_model_loaded\S* 0\.0$|^router_model_info\{[^}]*version=\"none\"", metrics_text, re.M), (
        "the consumer's metrics do not show that no churn model is loaded"
    )
