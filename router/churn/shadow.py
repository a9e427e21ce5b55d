"""Shadow model report: how a candidate churn model compares with the live one.

The consumer scores every batch with both models when ``ROUTER_MODEL_SHADOW_PATH`` is set;
the candidate never drives a decision. Every few seconds it compares them on the most
recently scored customers and stores the report in Redis, where this command reads it.
"""

from __future__ import annotations

import sys

import msgspec

from router.churn.model import Comparison
from router.core.identity import IdentityHasher
from router.settings import Settings
from router.state.store import StateStore, connect_redis

__all__ = ["print_shadow_report", "read_shadow_report"]


async def read_shadow_report(settings: Settings) -> Comparison | None:
    """The latest stored comparison, if a consumer with a shadow model wrote one."""
    client = connect_redis(settings.redis, timeout_s=5.0)
    try:
        raw = await StateStore(
            client, settings.redis.prefix, IdentityHasher.from_settings(settings.identity)
        ).shadow_report()
    finally:
        await client.aclose()
    return msgspec.json.decode(raw, type=Comparison) if raw else None


async def print_shadow_report(settings: Settings) -> int:
    """Print the report as a short table; exit code 1 when there is none."""
    report = await read_shadow_report(settings)
    if report is None:
        print("no shadow report: set ROUTER_MODEL_SHADOW_PATH for the consumer and let it score", file=sys.stderr)
        return 1
    for field in report.__struct_fields__:
        value = getattr(report, field)
        print(f"{field:<20} {value:.4f}" if isinstance(value, float) else f"{field:<20} {value}")
    return 0
