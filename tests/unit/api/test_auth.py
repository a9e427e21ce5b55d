"""API key parsing: expiry, refusals without echoing secrets."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from router.api.auth import ConfigError, parse_keys

TODAY = datetime.now(UTC).date()


def test_expiry_is_parsed_and_bad_entries_are_refused_without_echoing_secrets() -> None:
    keys = parse_keys(f"crm:helpdesk:secret-for-the-crm-app:expires={TODAY.isoformat()},ops:ops:another-long-secret-1")
    assert sorted((k.name, k.expires) for k in keys.values()) == [("crm", TODAY), ("ops", None)]
    with pytest.raises(ConfigError, match="expires is not a date") as err:
        parse_keys("crm:helpdesk:secret-for-the-crm-app:expires=someday")
    assert "secret-for-the-crm-app" not in str(err.value)
