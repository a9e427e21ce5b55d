"""Prometheus metrics, module level, named by convention (units, ``_total``).

Labels stay low-cardinality: route templates, tiers, event types, error classes; never a
customer id, phone number or message text.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

__all__ = [
    "ALERTS",
    "AUDIT_DROPPED",
    "BATCH_SIZE",
    "CONSUMER_LAG",
    "DEAD_LETTERED",
    "DECISIONS",
    "DECISION_SECONDS",
    "DEGRADED",
    "DUPLICATES",
    "EVENTS_APPLIED",
    "LAST_POLL",
    "LATE_EVENTS",
    "MODEL_INFO",
    "MODEL_SECONDS",
    "POLICY_INFO",
    "REDIS_ERRORS",
    "REDIS_SECONDS",
    "REQUESTS",
    "REQUEST_SECONDS",
    "WEBHOOK_SIGNATURE_FAILURES",
]

# 100 us .. 50 ms finely, then a few coarse buckets for the tail.
_LATENCY_BUCKETS = (
    0.0001, 0.00015, 0.0002, 0.0003, 0.0004, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003,
    0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip

REQUESTS = Counter("router_http_requests_total", "HTTP requests by route and status class", ["route", "status"])
REQUEST_SECONDS = Histogram(
    "router_http_request_duration_seconds", "Server time per request", ["route"], buckets=_LATENCY_BUCKETS
)
DECISION_SECONDS = Histogram(
    "router_decision_duration_seconds", "Time to compute one decision", buckets=_LATENCY_BUCKETS
)
DECISIONS = Counter(
    "router_decisions_total", "Decisions by tier, escalation role and first action", ["tier", "role", "action"]
)
DEGRADED = Counter("router_degraded_decisions_total", "Decisions made by a fallback", ["cause"])
MODEL_SECONDS = Histogram("router_model_inference_seconds", "ONNX inference time", ["site"], buckets=_LATENCY_BUCKETS)
MODEL_INFO = Info("router_model", "Loaded churn model")
POLICY_INFO = Info("router_policy", "Loaded routing policy")
EVENTS_APPLIED = Counter("router_consumer_events_total", "Events handled by the consumer", ["type", "result"])
DEAD_LETTERED = Counter("router_consumer_dead_lettered_total", "Events sent to the dead-letter topic", ["reason"])
DUPLICATES = Counter("router_consumer_duplicates_total", "Events skipped as already applied", ["kind"])
LATE_EVENTS = Counter("router_consumer_late_events_total", "Events beyond the lateness bound")
BATCH_SIZE = Histogram(
    "router_consumer_batch_size", "Records per consumer batch", buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000)
)
CONSUMER_LAG = Gauge("router_consumer_lag_records", "Records behind the partition end", ["partition"])
LAST_POLL = Gauge("router_consumer_last_poll_timestamp_seconds", "Unix time of the last successful poll")
REDIS_SECONDS = Histogram("router_redis_duration_seconds", "Redis round trip", ["op"], buckets=_LATENCY_BUCKETS)
REDIS_ERRORS = Counter("router_redis_errors_total", "Redis errors", ["op", "error"])
ALERTS = Counter("router_churn_alerts_total", "Churn alerts emitted")
WEBHOOK_SIGNATURE_FAILURES = Counter(
    "router_webhook_signature_failures_total", "Rejected webhook signatures", ["reason"]
)
AUDIT_DROPPED = Counter("router_audit_dropped_total", "Audit records that could not be written")
