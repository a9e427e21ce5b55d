"""API keys: parsing, scopes and expiry, through the real HTTP stack."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from litestar.testing import AsyncTestClient

from router.api.app import create_app
from tests.conftest import SettingsFactory
from tests.support.api_support import api_settings

TODAY = datetime.now(UTC).date()


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
