"""Locust load test: helpdesk classify, telephony screen-pop and chatbot handoff, realistic mix.

Against a running API whose Redis holds a population loaded by :mod:`loadtests.population`
(customer ``i`` is ``C%07d`` with phone ``+4930<10000000 + i>``)::

    python -m loadtests.population --customers 100000 --redis-url redis://127.0.0.1:6379/0
    ROUTER_AUTH_DEV_MODE=true ROUTER_AUTH_RATE_PER_S=100000 router serve
    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --headless -u 50 -r 10 -t 1m

Environment: ``BENCH_CUSTOMERS`` (population size, default 10000), ``BENCH_API_KEY`` (default
the dev key), ``BENCH_UNKNOWN_SHARE`` (share of contacts from unknown customers, default 0.05).
Mix by user weight: 6 helpdesk (tickets, e-mails, web forms), 3 telephony, 2 chatbot.
Locust measures closed-loop latency; ``python -m loadtests.bench_serve`` is the precise
benchmark (wrk, open-loop constant rate, same-run floor).
"""

from __future__ import annotations

import os
import random

from locust import FastHttpUser, between, task

CUSTOMERS = int(os.environ.get("BENCH_CUSTOMERS", "10000"))
API_KEY = os.environ.get("BENCH_API_KEY", "router-dev-key")
UNKNOWN = float(os.environ.get("BENCH_UNKNOWN_SHARE", "0.05"))
CATEGORIES = ("technical", "billing", "account", "cancellation", "sales", "general")


def _customer_index() -> int:
    # Unknown customers get the policy's default answer: they exist in real traffic too.
    return CUSTOMERS + random.randrange(1_000_000) if random.random() < UNKNOWN else random.randrange(CUSTOMERS)


class _ApiUser(FastHttpUser):
    abstract = True
    wait_time = between(0.05, 0.5)

    def on_start(self) -> None:
        self.headers = {"X-API-Key": API_KEY}


class HelpdeskUser(_ApiUser):
    """Tickets, e-mails and web forms routed by the helpdesk integration."""

    weight = 6

    @task(8)
    def classify_ticket(self) -> None:
        body = {
            "customer": {"customer_id": f"C{_customer_index():07d}"},
            "channel": random.choice(("ticket", "email", "web")),
            "category": random.choice(CATEGORIES),
            "priority": random.choices(("low", "normal", "high", "urgent"), (2, 6, 2, 1))[0],
        }
        self.client.post("/v1/classify", json=body, headers=self.headers, name="/v1/classify")

    @task(1)
    def classify_by_phone(self) -> None:
        body = {"customer": {"phone": f"+4930{10_000_000 + _customer_index():08d}"}, "channel": "phone"}
        self.client.post("/v1/classify", json=body, headers=self.headers, name="/v1/classify (phone)")


class TelephonyUser(_ApiUser):
    """The CTI asking for the caller card when a call comes in."""

    weight = 3

    @task
    def screen_pop(self) -> None:
        phone = f"%2B4930{10_000_000 + _customer_index():08d}"
        self.client.get(f"/v1/screenpop?phone={phone}", headers=self.headers, name="/v1/screenpop")


class ChatbotUser(_ApiUser):
    """The chatbot asking after each turn whether to hand over."""

    weight = 2

    @task
    def handoff(self) -> None:
        body = {
            "customer": {"customer_id": f"C{_customer_index():07d}"},
            "conversation": {
                "bot_turns": random.randint(0, 9),
                "failed_intents": random.randint(0, 2),
                "sentiment": round(random.uniform(-1, 1), 2),
                "asked_for_human": random.random() < 0.15,
                "category": random.choice(CATEGORIES),
            },
        }
        self.client.post("/v1/handoff", json=body, headers=self.headers, name="/v1/handoff")
