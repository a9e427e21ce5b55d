"""What the app factory refuses and what its OpenAPI document names (no server needed)."""

from __future__ import annotations

import re

import pytest

from router.api.app import create_app
from router.settings import AuthSettings, Settings, WebhookSettings

DEV = AuthSettings(dev_mode=True)


@pytest.mark.parametrize(
    ("hooks", "message"),
    [
        (WebhookSettings(standard_secret="whsec_not*base64*at-all"), "base64"),
        (WebhookSettings(standard_secret="whsec_c2hvcnQ="), "shorter than 16 bytes"),
        (WebhookSettings(stripe_rates="USD=0.92,GBP"), "entry 2"),
    ],
)
def test_unusable_webhook_settings_stop_the_start(hooks: WebhookSettings, message: str) -> None:
    with pytest.raises(SystemExit) as err:
        create_app(Settings(auth=DEV, webhooks=hooks))
    assert message in str(err.value)
    assert "not*base64" not in str(err.value) and "c2hvcnQ" not in str(err.value)


def test_operation_ids_read_as_method_names() -> None:
    spec = create_app(Settings(auth=DEV)).openapi_schema.to_schema()
    ids = [op["operationId"] for item in spec["paths"].values() for op in item.values() if isinstance(op, dict)]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z][a-z_]*", i) for i in ids), ids
    assert {"classify", "screenpop", "handoff", "send_events", "stripe_webhook", "intercom_webhook"} <= set(ids)
    # the privacy-keeping POST is the one named plainly
    assert spec["paths"]["/v1/screenpop"]["post"]["operationId"] == "screenpop"


def test_events_scope_and_documented_batch() -> None:
    spec = create_app(Settings(auth=DEV)).openapi_schema.to_schema()
    op = spec["paths"]["/v1/events"]["post"]
    assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/EventBatch")
    assert {"202", "400", "401", "403", "413", "503"} <= set(op["responses"])
    batch = spec["components"]["schemas"]["EventBatch"]
    union = batch["properties"]["events"]["items"]
    tags = {alt["$ref"].rsplit("/", 1)[1] for alt in union["anyOf"]}
    assert all(tag in spec["components"]["schemas"] for tag in tags)
    assert "ErasureRequested" not in tags and {"Payment", "SubscriptionChanged", "Usage"} <= tags
