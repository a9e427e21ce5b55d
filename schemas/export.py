"""Generate the JSON Schema files under ``schemas/json`` from the msgspec Structs.

The committed files are what other teams (producers, helpdesk integrators) read; a test
and ``router export-schemas --check`` fail when they drift from the Structs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from schemas.alerts import ChurnAlert
from schemas.api import ClassifyRequest, Decision, EventBatch
from schemas.events import CustomerEvent

__all__ = ["SCHEMAS", "render", "write_schemas"]

OUT = Path(__file__).resolve().parent / "json"

SCHEMAS: dict[str, Any] = {
    "customer-event": CustomerEvent,
    "classify-request": ClassifyRequest,
    "decision": Decision,
    "churn-alert": ChurnAlert,
    "event-batch": EventBatch,
}


def render(tp: Any) -> str:
    """Stable, pretty JSON Schema text of a type."""
    return json.dumps(msgspec.json.schema(tp), indent=2, sort_keys=True) + "\n"


def write_schemas(check: bool = False) -> list[str]:
    """Write (or with ``check`` only compare) every schema file; returns the names that differ."""
    OUT.mkdir(exist_ok=True)
    changed = []
    for name, tp in SCHEMAS.items():
        path = OUT / f"{name}.schema.json"
        text = render(tp)
        if not path.exists() or path.read_text() != text:
            changed.append(path.name)
            if not check:
                path.write_text(text)
    return changed
