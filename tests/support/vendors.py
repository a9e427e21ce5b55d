"""Payloads shaped like the vendors' documented examples (written for these tests, not copied).

Stripe: the Event, Subscription and Invoice objects of docs.stripe.com/api (fields the router
does not read are kept, so the decoder is tested against the real clutter). Intercom: the
notification envelope and the Conversation/Ticket models of developers.intercom.com.
"""

from __future__ import annotations

import copy
import time
from typing import Any

NOW = int(time.time())


def stripe_price(
    unit_amount: int | None = 2000,
    *,
    currency: str = "eur",
    interval: str = "month",
    interval_count: int = 1,
    usage_type: str = "licensed",
    nickname: str | None = "Pro monthly",
    recurring: bool = True,
) -> dict[str, Any]:
    return {
        "id": "price_1PgafmB7WZ01zgkW6dKueIc5",
        "object": "price",
        "active": True,
        "billing_scheme": "per_unit" if unit_amount is not None else "tiered",
        "created": 1721948530,
        "currency": currency,
        "custom_unit_amount": None,
        "livemode": False,
        "lookup_key": None,
        "metadata": {},
        "nickname": nickname,
        "product": "prod_QXg1hqf4jFNsqG",
        "recurring": {
            "interval": interval,
            "interval_count": interval_count,
            "meter": None,
            "usage_type": usage_type,
            "trial_period_days": None,
        }
        if recurring
        else None,
        "tax_behavior": "unspecified",
        "tiers_mode": None if unit_amount is not None else "graduated",
        "transform_quantity": None,
        "type": "recurring" if recurring else "one_time",
        "unit_amount": unit_amount,
        "unit_amount_decimal": None if unit_amount is None else str(unit_amount),
    }


def stripe_item(price: dict[str, Any] | None, quantity: int | None = 1, period_start: int = NOW - 86_400) -> dict:
    return {
        "id": "si_QXhVnC2h0Jczwc",
        "object": "subscription_item",
        "created": 1721954054,
        "current_period_start": period_start,
        "current_period_end": period_start + 30 * 86_400,
        "discounts": [],
        "metadata": {},
        "price": price,
        "quantity": quantity,
        "subscription": "sub_1Pgc6rB7WZ01zgkWNy0Cn5nw",
        "tax_rates": [],
    }


def stripe_subscription(
    items: list[dict[str, Any]] | None = None,
    *,
    status: str = "active",
    customer: Any = "cus_QXg1o8vcGmoR32",
    metadata: dict[str, Any] | None = None,
    currency: str = "eur",
    trial_end: int | None = None,
    ended_at: int | None = None,
    cancel_at_period_end: bool = False,
) -> dict[str, Any]:
    items = [stripe_item(stripe_price())] if items is None else items
    return {
        "id": "sub_1Pgc6rB7WZ01zgkWNy0Cn5nw",
        "object": "subscription",
        "application": None,
        "automatic_tax": {"enabled": False, "liability": None},
        "billing_cycle_anchor": NOW - 86_400,
        "cancel_at": None,
        "cancel_at_period_end": cancel_at_period_end,
        "canceled_at": ended_at,
        "cancellation_details": {"comment": None, "feedback": None, "reason": None},
        "collection_method": "charge_automatically",
        "created": NOW - 86_400,
        "currency": currency,
        "customer": customer,
        "days_until_due": None,
        "default_payment_method": None,
        "description": None,
        "discounts": [],
        "ended_at": ended_at,
        "items": {
            "object": "list",
            "data": items,
            "has_more": False,
            "url": "/v1/subscription_items?subscription=sub_1Pgc6rB7WZ01zgkWNy0Cn5nw",
        },
        "latest_invoice": "in_1Pgc6tB7WZ01zgkWu9fdqL6I",
        "livemode": False,
        "metadata": {} if metadata is None else metadata,
        "pending_update": None,
        "schedule": None,
        "start_date": NOW - 86_400,
        "status": status,
        "test_clock": None,
        "trial_end": trial_end,
        "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
        "trial_start": None if trial_end is None else trial_end - 14 * 86_400,
    }


def stripe_invoice(
    *,
    amount_paid: int = 2000,
    amount_due: int = 2000,
    currency: str = "eur",
    due_date: int | None = None,
    paid_at: int | None = NOW,
    attempt_count: int = 1,
    customer: Any = "cus_QXg1o8vcGmoR32",
    metadata: dict[str, Any] | None = None,
    subscription_metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": "in_1Pgc6tB7WZ01zgkWu9fdqL6I",
        "object": "invoice",
        "account_country": "DE",
        "amount_due": amount_due,
        "amount_paid": amount_paid,
        "amount_remaining": amount_due - amount_paid,
        "attempt_count": attempt_count,
        "attempted": True,
        "billing_reason": "subscription_cycle",
        "collection_method": "charge_automatically" if due_date is None else "send_invoice",
        "created": NOW - 3 * 86_400,
        "currency": currency,
        "customer": customer,
        "customer_email": "jenny.rosen@example.com",
        "due_date": due_date,
        "lines": {"object": "list", "data": [], "has_more": False, "url": "/v1/invoices/in_1/lines"},
        "livemode": False,
        "metadata": {} if metadata is None else metadata,
        "parent": {
            "type": "subscription_details",
            "quote_details": None,
            "subscription_details": {
                "metadata": {} if subscription_metadata is None else subscription_metadata,
                "subscription": "sub_1Pgc6rB7WZ01zgkWNy0Cn5nw",
            },
        },
        "status": "paid" if amount_paid else "open",
        "status_transitions": {
            "finalized_at": NOW - 3 * 86_400,
            "marked_uncollectible_at": None,
            "paid_at": paid_at,
            "voided_at": None,
        },
        "total": amount_due,
    }


def stripe_event(
    kind: str,
    obj: dict[str, Any],
    *,
    previous: dict[str, Any] | None = None,
    event_id: str = "evt_1NG8Du2eZvKYlo2CUI79vXWy",
    created: int = NOW,
) -> dict[str, Any]:
    data: dict[str, Any] = {"object": copy.deepcopy(obj)}
    if previous is not None:
        data["previous_attributes"] = previous
    return {
        "id": event_id,
        "object": "event",
        "api_version": "2025-03-31.basil",
        "created": created,
        "data": data,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": "req_Bw4EH2EN6CAbNq", "idempotency_key": "1d9f0c30-3c8c-4b3d-9d59-5bb1c0d86a2c"},
        "type": kind,
    }


# -- Intercom --------------------------------------------------------------------------------------


def intercom_conversation(
    *,
    external_id: str | None = "BIG1",
    email: str | None = "boss@example.com",
    author_type: str = "user",
    source_type: str = "conversation",
    priority: str = "not_priority",
    tags: list[str] | None = None,
    custom_attributes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "type": "conversation",
        "id": "147",
        "title": None,
        "created_at": NOW - 5,
        "updated_at": NOW - 5,
        "waiting_since": NOW - 5,
        "snoozed_until": None,
        "open": True,
        "state": "open",
        "read": False,
        "priority": priority,
        "admin_assignee_id": None,
        "team_assignee_id": None,
        "tags": {"type": "tag.list", "tags": [{"type": "tag", "id": "123", "name": n} for n in tags or []]},
        "conversation_rating": None,
        "source": {
            "type": source_type,
            "id": "403918330",
            "delivered_as": "customer_initiated",
            "subject": "",
            "body": "<p>The export stopped working</p>",
            "author": {"type": author_type, "id": "5ba682d23d7cf92bef87bfd4", "name": "Jane", "email": email or ""},
            "attachments": [],
            "url": None,
            "redacted": False,
        },
        "contacts": {
            "type": "contact.list",
            "contacts": [{"type": "contact", "id": "5ba682d23d7cf92bef87bfd4", "external_id": external_id}],
        },
        "teammates": {"type": "admin.list", "admins": []},
        "custom_attributes": custom_attributes or {},
        "first_contact_reply": None,
        "sla_applied": None,
        "statistics": None,
        "linked_objects": {"type": "list", "data": [], "total_count": 0, "has_more": False},
    }


def intercom_ticket(*, external_id: str | None = "BIG1", ticket_type: str = "Billing") -> dict[str, Any]:
    return {
        "type": "ticket",
        "id": "1295",
        "ticket_id": "1390",
        "category": "Customer",
        "ticket_attributes": {"_default_title_": "Invoice is wrong", "_default_description_": "Charged twice"},
        "ticket_state": "submitted",
        "ticket_type": {"type": "ticket_type", "id": "1295", "category": "Customer", "name": ticket_type},
        "contacts": {"type": "contact.list", "contacts": [{"type": "contact", "id": "1", "external_id": external_id}]},
        "admin_assignee_id": "0",
        "team_assignee_id": "0",
        "created_at": NOW - 5,
        "updated_at": NOW - 5,
        "open": True,
        "snoozed_until": None,
        "is_shared": True,
    }


def intercom_notification(
    topic: str,
    item: dict[str, Any] | None,
    *,
    notification_id: str = "notif_ccd8a4d2-c81a-4c7a-b76d-5d5d2b1a0e11",
    created_at: int | None = None,
) -> dict[str, Any]:
    return {
        "type": "notification_event",
        "app_id": "a86dr8yl",
        "data": {"type": "notification_event_data", "item": item},
        "links": {},
        "id": notification_id,
        "topic": topic,
        "delivery_status": "pending",
        "delivery_attempts": 1,
        "delivered_at": 0,
        "first_sent_at": NOW if created_at is None else created_at,
        "created_at": NOW if created_at is None else created_at,
        "self": None,
    }
