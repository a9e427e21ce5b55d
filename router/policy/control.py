"""The next-best-action control group: a fixed random share of customers gets the standard action.

Whether a next-best-action (a retention offer, a proactive health check, ...) keeps customers
can only be measured against customers who did not get it. A customer's arm is a pure function
of their keyed hash (the same ``customer_key`` Redis and the audit trail use) and the share: the
same customer is in the same arm on every worker, on every contact and after a restart, and no
one can pick the arm by choosing an id (the key is secret). ``router nba-report`` compares the
arms' retention.
"""

from __future__ import annotations

import hashlib
from typing import Literal

__all__ = ["ARMS", "Arm", "arm_of", "control_point"]

Arm = Literal["action", "control"]
ARMS: tuple[Arm, Arm] = ("action", "control")
_SALT = b"router.nba-control.v1\x00"


def control_point(customer_key: str) -> float:
    """The customer's fixed point in [0, 1): in the control group while it is below the share."""
    digest = hashlib.blake2b(_SALT + customer_key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def arm_of(customer_key: str, share: float) -> Arm:
    """``control`` for a ``share`` of customers (0 <= share <= 1), ``action`` for the others."""
    return "control" if share > 0.0 and control_point(customer_key) < share else "action"
