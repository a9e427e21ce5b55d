"""API keys: parsing, scopes and expiry, through the real HTTP stack."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from litestar.testing import AsyncTestClient

from router.api.app import create_app
from router.api.auth import ConfigError, parse_keys
from tests.api_support import api_settings
from tests.conftest import SettingsFactory

TODAY = datetime.now(UTC).date()


def test_expiry_is_parsed_and_bad_entries_are_refused_without_echoing_secrets() -> None:
    keys = parse_keys(f"crm:helpdesk:secret-for-the-crm-app:expires={TODAY.isoformat()},ops:ops:another-long-secret-1")
    assert sorted((k.name, k.expires) for k in keys.values()) == [("crm", TODAY), ("ops", None)]
    with pytest.raises(ConfigError, match="expires is not a date") as err:
        parse_keys("crm:helpdesk:secret-for-the-crm-app:expires=someday")
    assert "secret-for-the-crm-app" not in str(err.value)


async def test_an_expired_key_gets_401_and_a_key_valid_today_works(settings: SettingsFactory) -> None:
    yesterday = (TODAY - timedelta(days=1)).isoformat()
    spec = (
        f"old-crm:helpdesk:expired-secret-0123456789:expires={yesterday},"
        f"new-crm:helpdesk:current-secret-0123456789:expires={TODAY.isoformat()}"
    )
    s = api_settings(settings, auth={"keys": spec})
    body = {"customer": {"customer_id": "nobody"}}
    async with AsyncTestClient(app=create_app(s)) as client:
        old = await client.post("/v1/classify", json=body, headers={"X-API-Key": "expired-secret-0123456789"})
        assert old.status_code == 401 and f"expired on {yesterday}" in old.json()["detail"]
        assert "expired-secret" not in old.text
        new = await client.post("/v1/classify", json=body, headers={"X-API-Key": "current-secret-0123456789"})
        assert new.status_code == 200, new.text
