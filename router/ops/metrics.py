"""Prometheus metrics, module level, named by convention (units, ``_total``).

Labels stay low-cardinality: route templates, tiers, event types, error classes; never a
customer id, phone number or message text.

Several uvicorn workers: when ``PROMETHEUS_MULTIPROC_DIR`` is set before this module is
first imported, prometheus-client keeps every value in per-process files and
:func:`metrics_payload` sums them, so totals are correct whichever
worker a scrape reaches. That is also why the version "info" metrics are gauges with a
multiprocess mode rather than ``Info`` (which multiprocess mode does not collect).

Counters whose label values are known in advance are created at zero here, so dashboards
and alert rules see a series (at 0) before the first error rather than no data at all.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = [
    "ALERTS",
    "AUDIT_DROPPED",
    "BATCH_SIZE",
    "CALENDAR_LAST_HOLIDAY",
    "CIRCUIT_OPEN",
    "CONNECTORS",
    "CONNECTOR_INBOUND",
    "CONNECTOR_POLLS",
    "CONSUMER_LAG",
    "DEAD_LETTERED",
    "DECISIONS",
    "DECISION_SECONDS",
    "DEGRADED",
    "DEGRADED_CAUSES",
    "DUPLICATES",
    "EVENTS_APPLIED",
    "INBOUND_EVENTS",
    "LAST_POLL",
    "LATENCY_BUCKETS",
    "LATE_EVENTS",
    "MODEL_INFO",
    "MODEL_LOADED",
    "MODEL_SECONDS",
    "MULTIPROC_ENV",
    "OUTBOX_DEAD_LETTERS",
    "OUTBOX_DEPTH",
    "OUTBOX_OLDEST",
    "POLICY_INFO",
    "RECORD_CACHE",
    "REDIS_ERRORS",
    "REDIS_SECONDS",
    "REDIS_UP",
    "REQUESTS",
    "REQUEST_CHURN",
    "REQUEST_SECONDS",
    "STATE_RESETS",
    "STATUS_CLASSES",
    "SWEEP_CUSTOMERS",
    "SWEEP_DUE",
    "SWEEP_SECONDS",
    "WEBHOOK_LEGACY_SIGNATURES",
    "WEBHOOK_SIGNATURE_FAILURES",
    "WRITEBACKS",
    "WRITEBACK_FAILURES",
    "WRITEBACK_FAILURE_CAUSES",
    "WRITEBACK_LAG",
    "WRITEBACK_SECONDS",
    "InfoGauge",
    "metrics_payload",
    "prepare_multiprocess",
]

# Multiprocess mode writes a file per process and metric type as soon as a metric exists;
# a configured directory that is not there yet (an emptyDir subfolder) must not crash the
# import. Creating it is the only thing this module does besides defining metrics.
if _multiproc_dir := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(_multiproc_dir, exist_ok=True)

LATENCY_BUCKETS = (
    0.00001, 0.00002, 0.000035, 0.00005, 0.000075, 0.0001, 0.00015, 0.00025, 0.00035, 0.0005, 0.00075,
    0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
"""Upper bounds (seconds) of the latency histograms: from 10 us, because a decision's server time,
an ONNX inference and a Redis round trip are tens of microseconds (a lowest bucket of 100 us
would read every median as 50 us); finely up to 10 ms (the SLO's threshold, ``le="0.01"`` in
``deploy/prometheus/recording.yml``), coarsely beyond."""

STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx")
"""Values of the ``status`` label of :data:`REQUESTS` (1xx never ends a request)."""
DEGRADED_CAUSES = ("redis_unavailable", "model_unavailable", "model_failed")
"""Fallbacks the decision service can take (label ``cause`` of :data:`DEGRADED`)."""
_DEAD_LETTER_REASONS = ("empty_value", "undecodable", "schema_invalid", "reducer_error", "too_late")
_DUPLICATE_KINDS = ("event_id", "redelivered", "cas_conflict")
_SIGNATURE_FAILURES = ("missing", "malformed", "stale", "mismatch", "replayed")
_REDIS_ERROR_CLASSES = ("ConnectionError", "TimeoutError")


class InfoGauge:
    """A ``<name>{labels...} 1`` gauge standing in for ``prometheus_client.Info``.

    ``Info`` is not collected in multiprocess mode; a gauge in ``max`` mode is, and reads
    the same in PromQL (``router_model_info{version="..."} == 1``). A new :meth:`info`
    sets the previous label set to 0, so a reloaded model does not show two versions.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.labelnames = tuple(labelnames)
        self._gauge = Gauge(name, documentation, self.labelnames, multiprocess_mode="max")
        self._current: tuple[str, ...] | None = None

    def info(self, values: Mapping[str, str]) -> None:
        """Publish ``values`` (keys outside :attr:`labelnames` are ignored, missing ones are "")."""
        key = tuple(str(values.get(name, "")) for name in self.labelnames)
        if self._current is not None and self._current != key:
            self._gauge.labels(*self._current).set(0)
        self._gauge.labels(*key).set(1)
        self._current = key


# --- API ------------------------------------------------------------------------------------

REQUESTS = Counter("router_http_requests_total", "HTTP requests by route and status class", ["route", "status"])
REQUEST_SECONDS = Histogram(
    "router_http_request_duration_seconds", "Server time per request", ["route"], buckets=LATENCY_BUCKETS
)
DECISION_SECONDS = Histogram(
    "router_decision_duration_seconds", "Time to compute one decision", buckets=LATENCY_BUCKETS
)
DECISIONS = Counter(
    "router_decisions_total", "Decisions by tier, escalation role and first action", ["tier", "role", "action"]
)
DEGRADED = Counter("router_degraded_decisions_total", "Decisions made by a fallback", ["cause"])
MODEL_SECONDS = Histogram("router_model_inference_seconds", "ONNX inference time", ["site"], buckets=LATENCY_BUCKETS)
REQUEST_CHURN = Counter(
    "router_request_churn_total",
    "Churn scores of known customers on the request path: computed by the model, or reused from the consumer's "
    "score while it is exactly what the model returns",
    ["source"],
)
STATE_RESETS = Counter(
    "router_consumer_state_resets_total", "Times Redis was found empty and the log replayed from the start"
)
MODEL_LOADED = Gauge("router_model_loaded", "1 while a churn model is loaded and used, else 0")
MODEL_INFO = InfoGauge("router_model_info", "Loaded churn model (1 = in use)", ["version", "path"])
POLICY_INFO = InfoGauge("router_policy_info", "Loaded routing policy (1 = in use)", ["version"])
CALENDAR_LAST_HOLIDAY = Gauge(
    "router_policy_calendar_last_holiday_timestamp_seconds",
    "Start (UTC) of the last holiday a business-hours calendar of the loaded policy knows, within this "
    "year and the next two (0: none at all); generated public holidays keep it two years ahead",
    ["calendar"],
    multiprocess_mode="livemin",
)
WEBHOOK_SIGNATURE_FAILURES = Counter(
    "router_webhook_signature_failures_total", "Rejected webhook signatures", ["reason"]
)
AUDIT_DROPPED = Counter("router_audit_dropped_total", "Audit records that could not be written")
WEBHOOK_LEGACY_SIGNATURES = Counter(
    "router_webhook_legacy_signatures_total", "Generic webhooks still signed with the deprecated X-Router-Signature"
)
INBOUND_EVENTS = Counter(
    "router_inbound_events_total",
    "Events produced from HTTP (POST /v1/events, Stripe), rejected or ignored",
    ["source", "result"],
)

# --- consumer -------------------------------------------------------------------------------

EVENTS_APPLIED = Counter("router_consumer_events_total", "Events handled by the consumer", ["type", "result"])
DEAD_LETTERED = Counter("router_consumer_dead_lettered_total", "Events sent to the dead-letter topic", ["reason"])
DUPLICATES = Counter("router_consumer_duplicates_total", "Events skipped as already applied", ["kind"])
RECORD_CACHE = Counter(
    "router_consumer_record_cache_total",
    "Customer records the consumer took from its cache or read from Redis",
    ["result"],
)
LATE_EVENTS = Counter("router_consumer_late_events_total", "Events beyond the lateness bound")
BATCH_SIZE = Histogram(
    "router_consumer_batch_size", "Records per consumer batch", buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000)
)
CONSUMER_LAG = Gauge(
    "router_consumer_lag_records", "Records behind the partition end", ["partition"], multiprocess_mode="max"
)
LAST_POLL = Gauge(
    "router_consumer_last_poll_timestamp_seconds", "Unix time of the last successful poll", multiprocess_mode="max"
)
ALERTS = Counter("router_churn_alerts_total", "Churn alerts emitted")
SWEEP_CUSTOMERS = Counter(
    "router_sweep_customers_total",
    "Customers the sweep took up because their score was due: rescored, lost to a newer write, or gone "
    "(erased, or their events now come from another partition)",
    ["result"],
)
SWEEP_SECONDS = Histogram(
    "router_sweep_duration_seconds",
    "Time of one sweep over this consumer's partitions",
    buckets=(0.001, 0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
)
SWEEP_DUE = Gauge(
    "router_sweep_due_customers",
    "Customers of this consumer's partitions whose score is due, after the last sweep",
    multiprocess_mode="max",
)

# --- connectors (the inbound side in the API, the write-back side in `router connect`) -----------

CONNECTORS = ("rt", "zendesk", "freshdesk")
"""Values of the ``connector`` label."""
_WRITEBACK_RESULTS = ("landed", "duplicate", "retried", "dead_lettered")
_INBOUND_RESULTS = ("queued", "duplicate", "answered", "not_queued", "no_ticket")
_HELPDESK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_LAG_BUCKETS = (0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)

CONNECTOR_INBOUND = Counter(
    "router_connector_inbound_total",
    "Tickets a connector received (webhook or followed) by what happened to their write-back",
    ["connector", "result"],
)
WRITEBACKS = Counter(
    "router_connector_writebacks_total",
    "Write-back attempts by result: landed, duplicate (the decision's note was already there), retried, dead_lettered",
    ["connector", "result"],
)
WRITEBACK_SECONDS = Histogram(
    "router_connector_writeback_seconds",
    "Time of one write-back attempt against the helpdesk's API",
    ["connector"],
    buckets=_HELPDESK_BUCKETS,
)
WRITEBACK_LAG = Histogram(
    "router_connector_writeback_lag_seconds",
    "From the decision to its write-back landing in the helpdesk",
    ["connector"],
    buckets=_LAG_BUCKETS,
)
OUTBOX_DEPTH = Gauge(
    "router_connector_outbox_depth",
    "Write-backs not landed yet: queued, in flight or waiting for a retry",
    ["connector"],
    multiprocess_mode="max",
)
OUTBOX_DEAD_LETTERS = Gauge(
    "router_connector_dead_letters",
    "Write-backs given up on, waiting for an operator",
    ["connector"],
    multiprocess_mode="max",
)
CONNECTOR_POLLS = Counter(
    "router_connector_polls_total", "Searches of a followed helpdesk (RT) for new tickets", ["connector", "result"]
)
WRITEBACK_FAILURE_CAUSES = (
    "timeout", "unreachable", "rate_limited", "unavailable", "server_error", "conflict", "refused", "unreadable",
    "unexpected", "undecodable",
)  # fmt: skip
"""Values of the ``cause`` label of :data:`WRITEBACK_FAILURES`: ``router.connectors.base.FAILURE_KINDS``, and
``unexpected`` (an exception the connector did not expect) and ``undecodable`` (a write-back the process cannot read)."""
WRITEBACK_FAILURES = Counter(
    "router_connector_writeback_failures_total",
    "Write-back attempts that failed, by cause (retried or dead-lettered): timeout, unreachable, rate_limited (429), "
    "unavailable (502/503/504), server_error (other 5xx), conflict (408/409/425), refused (other 4xx), unreadable "
    "(the helpdesk's answer), unexpected, undecodable",
    ["connector", "cause"],
)
OUTBOX_OLDEST = Gauge(
    "router_connector_outbox_oldest_seconds",
    "Age of the oldest write-back not landed yet (queued, in flight or waiting for a retry), from its decision; 0 when none",
    ["connector"],
    multiprocess_mode="max",
)
CIRCUIT_OPEN = Gauge(
    "router_connector_circuit_open",
    "1 while this process holds a connector's write-backs back because its helpdesk cannot take requests "
    "(from the first helpdesk-wide failure until the helpdesk answers again), else 0",
    ["connector"],
    multiprocess_mode="max",
)

# --- shared -----------------------------------------------------------------------------------

REDIS_SECONDS = Histogram("router_redis_duration_seconds", "Redis round trip", ["op"], buckets=LATENCY_BUCKETS)
REDIS_ERRORS = Counter("router_redis_errors_total", "Redis errors", ["op", "error"])
REDIS_UP = Gauge(
    "router_redis_up",
    "1 while this process's last Redis ping (every 2 s) answered, else 0",
    # max: with several workers the parent process holds a never-set 0 too; a Redis outage reaches them all
    multiprocess_mode="max",
)

# --- known label values at zero ---------------------------------------------------------------

for _source in ("computed", "reused"):
    REQUEST_CHURN.labels(_source)
for _cause in DEGRADED_CAUSES:
    DEGRADED.labels(_cause)
for _reason in _DEAD_LETTER_REASONS:
    DEAD_LETTERED.labels(_reason)
for _kind in _DUPLICATE_KINDS:
    DUPLICATES.labels(_kind)
for _reason in _SIGNATURE_FAILURES:
    WEBHOOK_SIGNATURE_FAILURES.labels(_reason)
for _source, _result in (("api", "produced"), ("api", "rejected"), ("stripe", "produced"), ("stripe", "ignored")):
    INBOUND_EVENTS.labels(_source, _result)
for _connector in CONNECTORS:
    for _result in _WRITEBACK_RESULTS:
        WRITEBACKS.labels(_connector, _result)
    for _result in _INBOUND_RESULTS:
        CONNECTOR_INBOUND.labels(_connector, _result)
    for _cause in WRITEBACK_FAILURE_CAUSES:
        WRITEBACK_FAILURES.labels(_connector, _cause)
CONNECTOR_POLLS.labels("rt", "ok")
CONNECTOR_POLLS.labels("rt", "failed")
for _result in ("rescored", "conflict", "gone"):
    SWEEP_CUSTOMERS.labels(_result)
for _error in _REDIS_ERROR_CLASSES:
    REDIS_ERRORS.labels("read_customer", _error)


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus-client reads it when first imported: set it before any worker starts."""


# --- exposition, summed over worker processes ---------------------------------------------------


def prepare_multiprocess(workers: int) -> Path | None:
    """Set up prometheus-client's multiprocess mode before uvicorn starts its workers.

    With several workers and no ``PROMETHEUS_MULTIPROC_DIR``, a private temporary
    directory is created (and removed at exit) and exported, so every worker process
    (started fresh by uvicorn) writes its values there. Files of earlier processes in a
    given directory are removed: a restarted container would otherwise count them again.
    Returns the directory, or None when a single process keeps its metrics in memory.
    """
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        if workers <= 1:
            return None
        directory = tempfile.mkdtemp(prefix="router-metrics-")
        os.environ[MULTIPROC_ENV] = directory
        atexit.register(shutil.rmtree, directory, True)
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    own = f"_{os.getpid()}.db"
    for stale in path.glob("*.db"):
        if not stale.name.endswith(own):
            stale.unlink(missing_ok=True)
    return path


def metrics_payload() -> bytes:
    """Prometheus text exposition: summed over all worker processes in multiprocess mode."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry(auto_describe=True)
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return generate_latest(registry)
