"""Security defaults of the settings: no placeholder secret outside dev mode, dev mode only on
loopback, secrets masked in every repr, read from files, and gone from the app once parsed."""

from __future__ import annotations

import asyncio
import logging
import secrets
from pathlib import Path
from typing import Any

import msgspec
import pytest

from router.api.app import create_app
from router.connectors.worker import connect_stack
from router.ingest.consumer import consumer_stack
from router.settings import (
    ApiSettings,
    AuthSettings,
    IdentitySettings,
    KafkaSettings,
    RedisSettings,
    Secret,
    Settings,
    WebhookSettings,
    placeholder_reason,
    unsafe_reasons,
)

API_SECRET = "helpdesk-" + secrets.token_urlsafe(24)
IDENTITY = "identity-" + secrets.token_urlsafe(24)
ZENDESK = "zendesk-" + secrets.token_urlsafe(24)
REDIS_PASSWORD = "redis-" + secrets.token_urlsafe(12)
KEYS = f"crm:helpdesk:{API_SECRET}"
# Nothing listens on port 1: a process that connected before refusing would fail differently.
NOWHERE = {"kafka": KafkaSettings(bootstrap="127.0.0.1:1"), "redis": RedisSettings(url="redis://127.0.0.1:1/0")}


def production(**sections: Any) -> Settings:
    """Settings as an operator would write them: keys, a real identity key, no dev mode."""
    base: dict[str, Any] = {
        **NOWHERE,
        "auth": AuthSettings(keys=KEYS),
        "identity": IdentitySettings(hash_key=IDENTITY),
    }
    return Settings(**{**base, **sections})


def _start_consumer(settings: Settings) -> None:
    async def enter() -> None:
        async with consumer_stack(settings):
            pass

    asyncio.run(enter())


# --- item 8: the identity hash key ------------------------------------------------------------------

OLD_K8S_PLACEHOLDER = "replace-with-a-random-secret-of-32-chars"  # 40 characters: accepted before


@pytest.mark.parametrize(
    "secret",
    [
        IdentitySettings().hash_key,  # the built-in default
        OLD_K8S_PLACEHOLDER,
        "CHANGE-ME-to-a-random-secret-of-32-characters",
        "my-placeholder-identity-key-0001",
        "https://example.com/some/long/path",
        "short-secret",
        "a" * 40,
        "abcdabcdabcdabcdabcdabcdabcdabcd",
        "0101010101010101010101010101011",
    ],
)
def test_placeholders_and_weak_secrets_are_recognised(secret: str) -> None:
    reason = placeholder_reason(secret)
    assert reason is not None and secret not in reason


def test_generated_secrets_are_never_taken_for_placeholders() -> None:
    for _ in range(2000):
        assert placeholder_reason(secrets.token_urlsafe(32)) is None
        assert placeholder_reason(secrets.token_hex(16)) is None
    assert placeholder_reason("helpdesk-secret-0123456789") is None  # readable, but not a placeholder


def test_outside_dev_mode_the_api_refuses_the_default_identity_key() -> None:
    with pytest.raises(SystemExit) as refused:
        create_app(production(identity=IdentitySettings()))
    message = str(refused.value)
    assert "ROUTER_IDENTITY_HASH_KEY" in message and "placeholder" in message
    assert IdentitySettings().hash_key not in message
    create_app(production())  # a real key starts


@pytest.mark.parametrize("key", [IdentitySettings().hash_key, OLD_K8S_PLACEHOLDER])
def test_outside_dev_mode_the_consumer_refuses_a_placeholder_identity_key(key: str) -> None:
    with pytest.raises(SystemExit, match="ROUTER_IDENTITY_HASH_KEY"):
        _start_consumer(production(identity=IdentitySettings(hash_key=key)))


@pytest.mark.parametrize("key", [IdentitySettings().hash_key, OLD_K8S_PLACEHOLDER])
def test_outside_dev_mode_router_connect_refuses_a_placeholder_identity_key(key: str) -> None:
    async def enter() -> None:
        async with connect_stack(production(identity=IdentitySettings(hash_key=key))):
            pass

    with pytest.raises(SystemExit, match="ROUTER_IDENTITY_HASH_KEY"):
        asyncio.run(enter())


def test_dev_mode_accepts_the_default_identity_key_on_loopback() -> None:
    dev = Settings(**NOWHERE, auth=AuthSettings(dev_mode=True))
    assert unsafe_reasons(dev, binds_api=True) == []
    create_app(dev)


def test_a_placeholder_webhook_secret_is_refused_outside_dev_mode() -> None:
    s = production(webhooks=WebhookSettings(zendesk_secret="replace-with-the-zendesk-signing-secret"))
    with pytest.raises(SystemExit, match="ROUTER_WEBHOOKS_ZENDESK_SECRET"):
        create_app(s)


def test_a_placeholder_api_key_secret_is_refused() -> None:
    with pytest.raises(SystemExit, match="placeholder") as refused:
        create_app(production(auth=AuthSettings(keys="crm:helpdesk:replace-with-a-long-random-key")))
    assert "replace-with-a-long-random-key" not in str(refused.value)


# --- item 9: dev mode only on loopback ------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "api.internal"])
def test_dev_mode_refuses_a_bind_beyond_loopback(host: str) -> None:
    dev = Settings(**NOWHERE, auth=AuthSettings(dev_mode=True), api=ApiSettings(host=host))
    with pytest.raises(SystemExit) as refused:
        create_app(dev)
    assert "ROUTER_AUTH_DEV_MODE" in str(refused.value) and "ROUTER_API_HOST" in str(refused.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_dev_mode_on_loopback_starts(host: str) -> None:
    create_app(Settings(**NOWHERE, auth=AuthSettings(dev_mode=True), api=ApiSettings(host=host)))


def test_without_dev_mode_any_bind_is_allowed() -> None:
    create_app(production(api=ApiSettings(host="0.0.0.0")))


# --- item 10: secrets masked, read from files, dropped once parsed --------------------------------


def _every_string(value: object) -> list[str]:
    """Every string inside settings (however deep), as the app holds them."""
    if isinstance(value, msgspec.Struct):
        return [s for f in value.__struct_fields__ for s in _every_string(getattr(value, f))]
    return [str(value)] if isinstance(value, str) else []


def test_repr_of_settings_masks_every_secret() -> None:
    s = production(
        webhooks=WebhookSettings(zendesk_secret=ZENDESK, generic_secret=ZENDESK[::-1]),
        redis=RedisSettings(url=f"redis://:{REDIS_PASSWORD}@redis.internal:6379/0"),
    )
    shown = repr(s) + str(s) + f"{s}" + repr(s.auth) + repr(s.identity) + repr(s.webhooks)
    for secret in (API_SECRET, IDENTITY, ZENDESK, ZENDESK[::-1], REDIS_PASSWORD):
        assert secret not in shown
    assert "redis.internal:6379" in shown  # where Redis is stays readable
    # what `router dev` prints of a Redis URL
    assert Secret(f"redis://user:{REDIS_PASSWORD}@h:1/0").masked() == "redis://user:***@h:1/0"
    assert Secret("redis://h:1/0").masked() == "redis://h:1/0" and Secret(API_SECRET).masked() == "***"
    # ... while the values themselves are intact for hashing and signing
    assert s.identity.hash_key == IDENTITY and s.webhooks.zendesk_secret.encode() == ZENDESK.encode()


def test_every_secret_looking_field_is_a_secret() -> None:
    """A new secret setting (``*_secret``, ``*keys``, ``*password``) must be masked and readable from a file."""
    for section in Settings.__struct_fields__:
        kind = type(getattr(Settings(), section))
        for field in kind.__struct_fields__:
            if field.endswith(("secret", "keys", "password", "hash_key")):
                assert field in kind.secrets, f"{section}.{field} is not in {kind.__name__}.secrets"


def test_the_app_keeps_only_digests_of_the_api_keys() -> None:
    app = create_app(production())
    kept = _every_string(app.state.settings)
    assert not any(API_SECRET in value for value in kept)
    assert API_SECRET not in repr(app.state.settings) and KEYS not in repr(app.state._state)
    assert [key.name for key in app.state.auth.keys.values()] == ["crm"]


def test_secrets_can_be_read_from_files(tmp_path: Path) -> None:
    files = {
        "ROUTER_AUTH_KEYS_FILE": KEYS + "\n",
        "ROUTER_IDENTITY_HASH_KEY_FILE": IDENTITY + "\n",
        "ROUTER_WEBHOOKS_ZENDESK_SECRET_FILE": ZENDESK,
        "ROUTER_REDIS_URL_FILE": f"redis://:{REDIS_PASSWORD}@redis.internal:6379/0\n",
    }
    env = {}
    for name, content in files.items():
        path = tmp_path / name.lower()
        path.write_text(content)
        env[name] = str(path)
    s = Settings.from_env(env)
    assert s.auth.keys == KEYS and s.identity.hash_key == IDENTITY and s.webhooks.zendesk_secret == ZENDESK
    assert s.redis.url == f"redis://:{REDIS_PASSWORD}@redis.internal:6379/0"
    app = create_app(msgspec.structs.replace(s, **NOWHERE))
    assert [key.name for key in app.state.auth.keys.values()] == ["crm"]


def test_a_secret_file_is_refused_when_unreadable_or_doubled(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="ROUTER_AUTH_KEYS_FILE names a file that cannot be read"):
        Settings.from_env({"ROUTER_AUTH_KEYS_FILE": str(tmp_path / "missing")})
    (tmp_path / "keys").write_text(KEYS)
    both = {"ROUTER_AUTH_KEYS_FILE": str(tmp_path / "keys"), "ROUTER_AUTH_KEYS": KEYS}
    with pytest.raises(SystemExit, match="ROUTER_AUTH_KEYS or ROUTER_AUTH_KEYS_FILE, not both") as refused:
        Settings.from_env(both)
    assert API_SECRET not in str(refused.value)


def test_only_secret_fields_have_a_file_variant(tmp_path: Path) -> None:
    (tmp_path / "host").write_text("0.0.0.0")
    assert Settings.from_env({"ROUTER_API_HOST_FILE": str(tmp_path / "host")}).api.host == "127.0.0.1"


def test_building_the_app_logs_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    s = production(webhooks=WebhookSettings(zendesk_secret=ZENDESK))
    with caplog.at_level(logging.DEBUG):
        create_app(s)
        with pytest.raises(SystemExit) as refused:
            create_app(msgspec.structs.replace(s, identity=IdentitySettings(hash_key="x" * 8)))
    text = caplog.text + str(refused.value)
    for secret in (API_SECRET, IDENTITY, ZENDESK, "x" * 8):
        assert secret not in text
