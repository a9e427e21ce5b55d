"""Human overrides of a customer's tier: stored beside the snapshot, expiring by themselves.

Key ``P:{T}:o:H`` (same hash tag as the customer's snapshot ``P:{T}:c:H``), value the
msgpack :class:`~schemas.api.Override`, Redis TTL = the override's expiry: an expired
override is simply gone, so the decision path never has to compare clocks. The decision
service reads it in the same pipeline as the snapshot (one round trip).
"""

from __future__ import annotations

import msgspec

from router.state.store import Keys
from schemas.api import Override

__all__ = ["decode_override", "encode_override", "override_key"]

_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(Override)


def override_key(keys: Keys, customer_key: str) -> str:
    """Redis key of the override of the customer with keyed hash ``customer_key``."""
    return f"{keys.prefix}:{{{customer_key[:2]}}}:o:{customer_key}"


def encode_override(override: Override) -> bytes:
    return _enc.encode(override)


def decode_override(raw: bytes | None) -> Override | None:
    """The stored override, or None (absent, expired, or unreadable: never fail a decision on it)."""
    if not raw:
        return None
    try:
        return _dec.decode(raw)
    except msgspec.DecodeError:
        return None
