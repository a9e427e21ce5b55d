"""Telephony screen-pop: the agent's card for an incoming call, looked up by caller number.

The number is normalised to E.164 and looked up by its keyed hash (never stored, logged or
echoed). A number nobody has gives an "unknown caller" card, a withheld or unreadable number
a "number withheld" card: a CTI shows a card either way, an error would show nothing.
The lookup is a decision like any other (channel ``phone``), so it is audited.

What real phone systems send (:func:`caller_number`): a CTI that templates
``?phone=+14155550100`` sends a raw ``+``, which URL decoding turns into a space, so a query
value starting with a space before digits is read as ``+`` (an international number; the default
region never applies to it). ``tel:`` URIs (RFC 3966) are read too: ``tel:+1-415-555-0100;ext=12``
(visual separators and the extension dropped), and a local number with a global
``phone-context`` (``tel:555-0100;phone-context=+1-415``); one with a domain context cannot be
placed and gives the withheld card.
"""

from __future__ import annotations

import html
from datetime import datetime
from typing import Literal

from router.core.identity import InvalidIdentifier, normalise_phone
from router.serving.decisions import DecisionService, Resolved
from schemas.api import ClassifyRequest, CustomerRef, ScreenPop

__all__ = ["ScreenPopService", "caller_number", "render_card"]

_VISUAL = str.maketrans("", "", "-.() ")


def caller_number(raw: str | None, *, from_url: bool = False) -> str | None:
    """The number to normalise from what a phone system sent, or None when it names no number.

    ``from_url``: the value came from a URL query, where a raw ``+`` has become a space.
    """
    if raw is None:
        return None
    text = raw
    if text[:4].lower() == "tel:":
        return _tel(text[4:], from_url=from_url)
    if from_url and text[:1] == " ":
        rest = text.lstrip()
        if rest[:1].isdigit():
            return "+" + rest
    return text.strip() or None


def _tel(body: str, *, from_url: bool) -> str | None:
    """RFC 3966 ``telephone-subscriber``: global ``+digits`` or local digits with a phone-context."""
    if from_url and body[:1] == " " and body.lstrip()[:1].isdigit():
        body = "+" + body.lstrip()
    number, *params = body.strip().split(";")
    context = None
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "phone-context":
            context = value.strip()
    digits = number.translate(_VISUAL)
    if digits.startswith("+"):
        return digits if digits[1:].isdigit() else None
    if not digits.isdigit() or context is None:
        return None
    if from_url and context[:1] == " ":
        context = "+" + context.lstrip()
    prefix = context.translate(_VISUAL)
    if not prefix.startswith("+") or not prefix[1:].isdigit():
        return None  # a domain-name context: the number cannot be placed without it
    return prefix + digits


class ScreenPopService:
    def __init__(self, decisions: DecisionService) -> None:
        self.decisions = decisions

    async def lookup(self, raw: str | None, *, from_url: bool = False) -> ScreenPop:
        """The card for a caller number in any common notation or as a ``tel:`` URI (None or garbage: withheld).

        ``from_url``: ``raw`` is a URL query value (a leading space before digits was a ``+``).
        """
        service = self.decisions
        phone = caller_number(raw, from_url=from_url) if raw is not None and len(raw) <= 64 else None
        usable = phone is not None and 3 <= len(phone) <= 32
        if usable:
            assert phone is not None
            try:
                normalise_phone(phone, service.hasher.default_region)
            except InvalidIdentifier:
                usable = False
        if usable:
            req = ClassifyRequest(customer=CustomerRef(phone=phone), channel="phone")
            resolved = await service.resolve(req.customer)
        else:
            req = ClassifyRequest(customer=CustomerRef(customer_id="withheld"), channel="phone")
            resolved = Resolved(None, None, None, None)
        d = service.decide(req, resolved)
        caller: Literal["known", "unknown", "withheld"] = (
            "known" if d.customer_known else "unknown" if usable else "withheld"
        )
        return ScreenPop(
            caller=caller,
            tier=d.tier,
            clv_score=d.scores.clv_score,
            churn_risk=d.scores.churn_risk,
            sentiment=d.scores.sentiment,
            last_interaction=d.scores.last_interaction,
            last_interaction_at=d.scores.last_interaction_at,
            recommendation=d.next_best_actions[0].label if d.next_best_actions else "",
            next_best_actions=d.next_best_actions,
            escalation=d.escalation,
            reasons=d.reasons,
            decision_id=d.decision_id,
            degraded=d.degraded,
            degraded_cause=d.degraded_cause,
        )


_BADGE = {"VIP": "#7b1fa2", "Premium": "#1565c0", "Standard": "#2e7d32", "Basic": "#616161"}


def _ago(at: datetime | None, now: datetime) -> str:
    if at is None:
        return ""
    days = (now - at).total_seconds() / 86_400
    if days < 1:
        return " (today)"
    return f" ({days:.0f} day{'s' if round(days) != 1 else ''} ago)"


def _churn_words(risk: float | None) -> str:
    if risk is None:
        return "unknown"
    band = "high" if risk >= 70 else "medium" if risk >= 40 else "low"
    return f"{band} ({risk:.0f} %)"


def render_card(card: ScreenPop, now: datetime) -> str:
    """A small self-contained HTML page (no scripts, no external assets) for the CTI pane."""
    e = html.escape
    if card.caller == "known":
        title = f'<span class="badge" style="background:{_BADGE[card.tier]}">{e(card.tier)}</span> Known customer'
    elif card.caller == "unknown":
        title = '<span class="badge" style="background:#9e9e9e">?</span> Unknown caller'
    else:
        title = '<span class="badge" style="background:#9e9e9e">?</span> Number withheld'
    rows = []
    if card.caller == "known":
        clv = (
            "unknown"
            if card.clv_score is None
            else f"{card.clv_score:.0f}/100 (top {max(1, 100 - int(card.clv_score))} %)"
        )
        last = (card.last_interaction or "none") + _ago(card.last_interaction_at, now)
        rows = [
            ("CLV score", clv),
            ("Churn risk", _churn_words(card.churn_risk)),
            ("Sentiment", card.sentiment),
            ("Last interaction", last),
        ]
    else:
        rows = [("Customer", "no customer record for this number" if card.caller == "unknown" else "no number")]
    rows.append(("Route to", f"{card.escalation.queue} ({card.escalation.role.replace('_', ' ')})"))
    table = "".join(
        f'<tr><th>{e(k)}</th><td class="{e(k.lower().replace(" ", "-"))}">{e(v)}</td></tr>' for k, v in rows
    )
    reasons = "".join(f"<li>{e(r)}</li>" for r in card.reasons)
    recommendation = "; ".join(e(a.label) for a in card.next_best_actions) or e(card.recommendation)
    note = (
        f'<p class="degraded">Limited information: {e(card.degraded_cause or "fallback")}; default routing applies.</p>'
        if card.degraded
        else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Caller card</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{{font:15px/1.4 "DejaVu Sans",Arial,sans-serif;margin:0;background:#f5f5f5;color:#212121}}
.card{{margin:12px;padding:14px 16px;background:#fff;border-radius:8px;box-shadow:0 1px 4px rgba(0,0,0,.2);max-width:460px}}
h1{{font-size:18px;margin:0 0 10px}}
.badge{{color:#fff;border-radius:4px;padding:2px 8px;margin-right:6px;font-size:15px}}
table{{border-collapse:collapse;width:100%}}
th{{text-align:left;font-weight:normal;color:#616161;padding:3px 10px 3px 0;white-space:nowrap;vertical-align:top}}
td{{padding:3px 0}}
.rec{{margin:10px 0 4px;padding:8px 10px;background:#e3f2fd;border-radius:6px}}
ul{{margin:6px 0 0 18px;padding:0;color:#424242;font-size:13px}}
.degraded{{color:#b71c1c;font-size:13px}}
</style></head>
<body><div class="card" data-caller="{e(card.caller)}" data-tier="{e(card.tier)}">
<h1>{title}</h1>
<table>{table}</table>
<div class="rec"><b>Recommendation:</b> {recommendation}</div>
<ul>{reasons}</ul>{note}
</div></body></html>
"""
