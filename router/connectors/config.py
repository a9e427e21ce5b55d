"""The connector file: which helpdesks get decisions written back, and how router's names map to theirs.

TOML, read once at start (``ROUTER_CONNECTORS_CONFIG_PATH``); a helpdesk is connected when its
section is present. Secrets are not in this file: API tokens come from ``ROUTER_CONNECTORS_*``
variables (:class:`router.settings.ConnectorSettings`). A mistake is reported with its path, e.g.
``Expected `int | null`, got `str` - at `$.zendesk.default_group```. Example: ``deploy/integrations/connectors.toml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec

from schemas.api import Category, Tier
from schemas.events import Severity

__all__ = [
    "ConnectorConfigError",
    "ConnectorsConfig",
    "FreshdeskConfig",
    "RtConfig",
    "ZendeskConfig",
    "load_connectors",
]


class ConnectorConfigError(ValueError):
    """The connector file cannot be used (the message names the file and the field)."""


def _default_tier_priority() -> dict[Tier, Severity]:
    return {"VIP": "high", "Premium": "normal"}


class RtConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Request Tracker 5: new tickets are followed through REST2; decisions written back through REST2."""

    url: str
    """Base URL of RT (REST2 is at ``<url>/REST/2.0``)."""
    poll_interval_s: float = 0.5
    """How often RT is asked for tickets created since the last one routed."""
    watch_queues: list[str] = msgspec.field(default_factory=list)
    """Route only tickets created in these RT queues (empty: every queue)."""
    route_existing: bool = False
    """On the very first start, route the tickets already in RT too (default: only those created from now on)."""
    queues: dict[str, str] = msgspec.field(default_factory=dict)
    """Policy queue (escalation.queue) -> RT queue name."""
    default_queue: str | None = None
    """RT queue for a policy queue missing from ``queues`` (none: the ticket stays where it is)."""
    tier_field: str | None = "Router tier"
    """Ticket custom field for the tier (must be applied to the target queues; none: not written)."""
    action_field: str | None = "Router next action"
    """Ticket custom field for the first next-best-action (none: not written)."""
    priorities: dict[Severity, int] = msgspec.field(
        default_factory=lambda: {"low": 20, "normal": 50, "high": 80, "urgent": 100}
    )
    """Severity -> RT Priority (0-100)."""
    categories: dict[str, Category] = msgspec.field(default_factory=dict)
    """RT queue a ticket was created in -> its category for the policy (default: general)."""


class ZendeskConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Zendesk: trigger webhook in (``/v1/webhooks/zendesk``), Tickets API out."""

    url: str
    """``https://<subdomain>.zendesk.com``."""
    groups: dict[str, int] = msgspec.field(default_factory=dict)
    """Policy queue -> Zendesk group_id."""
    default_group: int | None = None
    """Group for a policy queue missing from ``groups`` (none: the group is left as it is)."""
    tier_field_id: int | None = None
    """Id of a ticket field (text or drop-down) for the tier (none: the ``router_tier_*`` tag only)."""
    action_field_id: int | None = None
    """Id of a ticket field for the first next-best-action code (none: ``router_action_*`` tags only)."""
    tags: bool = True
    """Add ``router_*`` tags (tier, role, actions), replacing router's earlier ones and keeping all others."""


class FreshdeskConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Freshdesk: automation webhook in (``/v1/webhooks/freshdesk``, token), Tickets API v2 out."""

    url: str
    """``https://<domain>.freshdesk.com``."""
    groups: dict[str, int] = msgspec.field(default_factory=dict)
    """Policy queue -> Freshdesk group_id."""
    default_group: int | None = None
    """Group for a policy queue missing from ``groups`` (none: the group is left as it is)."""
    priorities: dict[Severity, int] = msgspec.field(
        default_factory=lambda: {"low": 1, "normal": 2, "high": 3, "urgent": 4}
    )
    """Severity -> Freshdesk priority (1 low, 2 medium, 3 high, 4 urgent)."""
    due_field: Literal["fr_due_by", "due_by", ""] = "fr_due_by"
    """Which deadline the SLA sets: first response (``fr_due_by``), resolution (``due_by``) or none."""
    tier_field: str | None = None
    """Custom field name (``cf_...``) for the tier (none: the ``router_tier_*`` tag only)."""
    action_field: str | None = None
    """Custom field name for the first next-best-action code (none: tags only)."""
    tags: bool = True
    """Add ``router_*`` tags, replacing router's earlier ones and keeping all others."""


class ConnectorsConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    tier_priority: dict[Tier, Severity] = msgspec.field(default_factory=_default_tier_priority)
    """Lowest priority a tier's ticket gets (the requester's choice is kept when higher)."""
    rt: RtConfig | None = None
    zendesk: ZendeskConfig | None = None
    freshdesk: FreshdeskConfig | None = None

    @property
    def names(self) -> list[str]:
        """The connected helpdesks."""
        return [name for name in ("rt", "zendesk", "freshdesk") if getattr(self, name) is not None]


def load_connectors(path: str) -> ConnectorsConfig:
    """The connector file at ``path``; an empty path means no helpdesk is connected."""
    if not path:
        return ConnectorsConfig()
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConnectorConfigError(f"connector file {path}: {exc.strerror or type(exc).__name__}") from None
    try:
        config = msgspec.toml.decode(raw, type=ConnectorsConfig)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ConnectorConfigError(f"connector file {path}: {exc}") from None
    for name in config.names:
        url: str = getattr(config, name).url
        if not url.startswith(("https://", "http://")) or len(url) < 10:
            raise ConnectorConfigError(f"connector file {path}: {name}.url must be an http(s) URL")
    if config.rt is not None and config.rt.poll_interval_s < 0.05:
        raise ConnectorConfigError(f"connector file {path}: rt.poll_interval_s must be at least 0.05")
    return config
