"""Signature schemes against the vendors' own vectors and the ways a request goes wrong."""

from __future__ import annotations

import base64

import pytest

from router.serving.signatures import (
    SignatureError,
    parse_standard_secret,
    sign_intercom,
    sign_standard,
    sign_stripe,
    verify_intercom,
    verify_standard,
    verify_stripe,
)

# The Standard Webhooks reference libraries' sign-function vector (libraries/*/tests).
STD_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
STD_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
STD_TS = 1614265330
STD_BODY = b'{"test": 2432232314}'
STD_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_standard_webhooks_reference_vector() -> None:
    key = parse_standard_secret(STD_SECRET)
    assert sign_standard(key, STD_ID, STD_TS, STD_BODY) == STD_SIGNATURE
    assert (
        verify_standard(key, STD_ID, str(STD_TS), STD_SIGNATURE, STD_BODY, now=STD_TS + 10, tolerance_s=300) == STD_TS
    )
    # the prefix is optional
    assert parse_standard_secret(STD_SECRET.removeprefix("whsec_")) == key


def test_standard_webhooks_secret_without_padding() -> None:
    raw = b"0123456789abcdefghijklmnopqrstuv!"  # 33 bytes: base64 needs padding
    text = base64.b64encode(raw).decode().rstrip("=")
    assert parse_standard_secret("whsec_" + text) == raw
    with pytest.raises(ValueError, match="base64"):
        parse_standard_secret("whsec_not base64!")
    with pytest.raises(ValueError, match="shorter"):
        parse_standard_secret("whsec_" + base64.b64encode(b"short").decode())


def test_standard_webhooks_several_signatures_one_valid() -> None:
    key = parse_standard_secret(STD_SECRET)
    header = " ".join(
        [
            "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
            "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
            "v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw/enGzPCXe5BdqzCInXqYXFymVJaA7AZdpXwVLPo3mNl8EM+m7TBAg==",
            STD_SIGNATURE,
        ]
    )
    assert verify_standard(key, STD_ID, str(STD_TS), header, STD_BODY, now=STD_TS, tolerance_s=300) == STD_TS


@pytest.mark.parametrize(
    ("msg_id", "ts", "sig", "body", "now", "reason"),
    [
        (None, str(STD_TS), STD_SIGNATURE, STD_BODY, STD_TS, "missing"),
        (STD_ID, None, STD_SIGNATURE, STD_BODY, STD_TS, "missing"),
        (STD_ID, str(STD_TS), None, STD_BODY, STD_TS, "missing"),
        (STD_ID, "hello", STD_SIGNATURE, STD_BODY, STD_TS, "malformed"),
        (STD_ID, "2021-02-25T15:02:10Z", STD_SIGNATURE, STD_BODY, STD_TS, "malformed"),
        ("msg.with.dots", str(STD_TS), STD_SIGNATURE, STD_BODY, STD_TS, "malformed"),
        # the libraries' "invalid signature" vector differs from the valid one in one character
        (STD_ID, str(STD_TS), "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=", STD_BODY, STD_TS, "mismatch"),
        (STD_ID, str(STD_TS), "v1,", STD_BODY, STD_TS, "mismatch"),
        (STD_ID, str(STD_TS), "v1,dawfeoifkpqwoekfpqoekf", STD_BODY, STD_TS, "mismatch"),
        (STD_ID, str(STD_TS), STD_SIGNATURE, STD_BODY + b" ", STD_TS, "mismatch"),
        (STD_ID, str(STD_TS + 1), STD_SIGNATURE, STD_BODY, STD_TS, "mismatch"),
        (STD_ID, str(STD_TS), STD_SIGNATURE, STD_BODY, STD_TS + 301, "stale"),
        (STD_ID, str(STD_TS), STD_SIGNATURE, STD_BODY, STD_TS - 301, "stale"),
    ],
)
def test_standard_webhooks_refusals(
    msg_id: str | None, ts: str | None, sig: str | None, body: bytes, now: int, reason: str
) -> None:
    key = parse_standard_secret(STD_SECRET)
    with pytest.raises(SignatureError) as err:
        verify_standard(key, msg_id, ts, sig, body, now=now, tolerance_s=300)
    assert err.value.reason == reason
    assert "g0hM9" not in err.value.message and "MfKQ9" not in err.value.message


STRIPE_SECRET = "whsec_test_secret_1234567890abcdef"
BODY = b'{"id": "evt_1", "object": "event"}'


def test_stripe_signature_as_documented() -> None:
    header = sign_stripe(STRIPE_SECRET, 1_700_000_000, BODY)
    assert header.startswith("t=1700000000,v1=") and len(header.split("v1=")[1]) == 64
    assert verify_stripe(STRIPE_SECRET, header, BODY, now=1_700_000_100, tolerance_s=300) == 1_700_000_000
    # a secret being rolled: Stripe sends one v1 per secret, plus v0 (ignored) in test mode
    rolled = f"t=1700000000,v1={'0' * 64},{header.split(',')[1]},v0={'1' * 64}"
    assert verify_stripe(STRIPE_SECRET, rolled, BODY, now=1_700_000_000, tolerance_s=300)


@pytest.mark.parametrize(
    ("header", "now", "reason"),
    [
        (None, 1_700_000_000, "missing"),
        ("", 1_700_000_000, "missing"),
        ("v1=abc", 1_700_000_000, "malformed"),
        ("t=soon,v1=abc", 1_700_000_000, "malformed"),
        ("t=1700000000", 1_700_000_000, "missing"),
        ("t=1700000000,v0=" + "a" * 64, 1_700_000_000, "missing"),
        ("t=1700000000,v1=" + "a" * 64, 1_700_000_000, "mismatch"),
        ("signed", 1_700_000_000, "malformed"),
        (None, 1_700_000_000 + 301, "stale"),
    ],
)
def test_stripe_refusals(header: str | None, now: int, reason: str) -> None:
    if reason == "stale":
        header = sign_stripe(STRIPE_SECRET, 1_700_000_000, BODY)
    with pytest.raises(SignatureError) as err:
        verify_stripe(STRIPE_SECRET, header, BODY, now=now, tolerance_s=300)
    assert err.value.reason == reason


def test_stripe_secret_is_used_as_text_not_decoded() -> None:
    # Stripe keys the HMAC with the whole "whsec_..." string; decoding it (as Standard Webhooks does) fails.
    header = sign_stripe(STRIPE_SECRET, 1_700_000_000, BODY)
    with pytest.raises(SignatureError):
        verify_stripe(STRIPE_SECRET.removeprefix("whsec_"), header, BODY, now=1_700_000_000, tolerance_s=300)


def test_intercom_signature() -> None:
    header = sign_intercom("client-secret", BODY)
    assert header.startswith("sha1=") and len(header) == 45
    verify_intercom("client-secret", header, BODY)
    verify_intercom("client-secret", header.upper().replace("SHA1=", "sha1="), BODY)  # hex case does not matter
    for bad, reason in [
        (None, "missing"),
        ("sha256=" + "a" * 64, "malformed"),
        ("abc", "malformed"),
        (sign_intercom("other-secret", BODY), "mismatch"),
    ]:
        with pytest.raises(SignatureError) as err:
            verify_intercom("client-secret", bad, BODY)
        assert err.value.reason == reason
    with pytest.raises(SignatureError):
        verify_intercom("client-secret", header, BODY + b"\n")
