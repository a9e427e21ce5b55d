"""Secrets in real processes: read from ``*_FILE`` (Docker and Kubernetes secrets), and never in a
log line of the API or the consumer, even at debug level."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from router.settings import to_env
from tests.conftest import SettingsFactory
from tests.support.api_support import GENERIC_SECRET, KEY_SPEC, KEYS, ZENDESK_SECRET, api_settings, auth, live_server


def test_api_and_consumer_read_secrets_from_files_and_never_log_them(settings: SettingsFactory, tmp_path: Path) -> None:
    s = api_settings(settings, api={"log_level": "debug"})
    files = {
        "ROUTER_AUTH_KEYS": KEY_SPEC,
        "ROUTER_IDENTITY_HASH_KEY": s.identity.hash_key,
        "ROUTER_WEBHOOKS_ZENDESK_SECRET": ZENDESK_SECRET,
        "ROUTER_WEBHOOKS_GENERIC_SECRET": GENERIC_SECRET,
    }
    env = {name: "" for name in files}  # the plain variables are empty: only the files hold the secrets
    for name, secret in files.items():
        path = tmp_path / name.lower()
        path.write_text(secret + "\n")  # as `kubectl create secret --from-file` leaves it
        env[f"{name}_FILE"] = str(path)
    secrets = [*KEYS.values(), s.identity.hash_key, ZENDESK_SECRET, GENERIC_SECRET]

    consumer_log = tmp_path / "consumer.log"
    consumer_env = {**os.environ, **to_env(s), **env}
    with open(consumer_log, "wb") as out:
        consumer = subprocess.Popen([sys.executable, "-m", "router", "consume"], env=consumer_env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        api_log = tmp_path / "api.log"
        with live_server(s, api_log, extra_env=env) as client:
            # the key from the file works, and so does the rest of the request path
            r = client.post("/v1/classify", json={"customer": {"customer_id": "nobody"}}, headers=auth("helpdesk"))
            assert r.status_code == 200, r.text
            assert client.post("/v1/classify", json={}, headers={"X-API-Key": "wrong"}).status_code == 401
        time.sleep(1.0)
        assert consumer.poll() is None, consumer_log.read_text()[-2000:]  # the file's identity key was accepted
    finally:
        consumer.terminate()
        consumer.wait(15)
    logs = api_log.read_text() + consumer_log.read_text()
    assert "DEBUG" in logs or '"level"' in logs  # something was logged at all
    for secret in secrets:
        assert secret not in logs
