"""Typed settings, one class per subsystem, read from the environment once.

Each field has a default and a one-line docstring; ``ROUTER_<SUBSYSTEM>_<FIELD>``
overrides it (e.g. ``ROUTER_KAFKA_BOOTSTRAP=broker:9092``). Tests build a
:class:`Settings` directly and pass it to the factories: nothing reads the environment
anywhere else.

Secret fields (API keys, the identity hash key, webhook secrets, the Redis URL with its
password) hold a :class:`Secret`: the value itself for hashing, signing and child processes,
masked in every ``repr`` (so in logs and tracebacks of settings). Each can also be read from a
file named by ``<VARIABLE>_FILE`` (Docker and Kubernetes secrets). :func:`require_safe` is the
one check, run by the API and the consumer at start-up, that refuses placeholder secrets and a
dev mode reachable from the network.
"""

from __future__ import annotations

import collections
import math
import os
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import msgspec

__all__ = [
    "ApiSettings",
    "AuthSettings",
    "ConnectorSettings",
    "ConsoleSettings",
    "HandoffSettings",
    "IdentitySettings",
    "KafkaSettings",
    "ModelSettings",
    "PolicySettings",
    "RedisSettings",
    "Secret",
    "Settings",
    "StreamSettings",
    "WebhookSettings",
    "placeholder_reason",
    "require_safe",
    "settings_table",
    "to_env",
    "unsafe_reasons",
]

_ROOT = Path(__file__).resolve().parent.parent


class Secret(str):
    """A secret setting: the string itself everywhere, masked in ``repr`` (and so in reprs of settings).

    A URL keeps its scheme and host in the repr, only its password is masked.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "''" if not self else repr(self.masked())

    def masked(self) -> str:
        """What may be shown: ``***``, or a URL with ``***`` for its password."""
        if "://" in self:
            parts = urllib.parse.urlsplit(self)
            if parts.password is None:
                return str(self)
            netloc = parts.netloc.rsplit("@", 1)[1]
            user = f"{parts.username}:" if parts.username else ":"
            return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}***@{netloc}"))
        return "***"


class _Section(msgspec.Struct, kw_only=True):
    """A subsystem's settings; the fields named in ``secrets`` hold :class:`Secret` values."""

    secrets: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for name in self.secrets:
            value = getattr(self, name)
            if not isinstance(value, Secret):
                setattr(self, name, Secret(value))


class KafkaSettings(_Section, kw_only=True):
    bootstrap: str = ""
    """Kafka bootstrap servers; empty means `router dev` starts an embedded broker."""
    events_topic: str = "customer-events"
    """Topic of customer events (keyed by customer_id)."""
    dead_letter_topic: str = "customer-events.dlq"
    """Where undecodable or invalid events go, with headers saying why."""
    alerts_topic: str = "churn-alerts"
    """Churn alerts for the customer-success team."""
    group_id: str = "router-state"
    """Consumer group of the state consumers."""
    partitions: int = 6
    """Partitions created for the events topic by `router dev` / `router topics`."""
    session_timeout_ms: int = 10_000
    """Consumer group session timeout: how fast a dead consumer's partitions move to another."""
    replication_factor: int = 1
    """Replication factor of topics created by `router dev` / `router topics` (1 for a single broker)."""
    fetch_min_bytes: int = 1
    """State consumers' fetch.min.bytes: the broker answers a fetch once this much is there (1: at once)."""
    fetch_max_wait_ms: int = 25
    """State consumers' fetch.max.wait.ms: the longest the broker holds a fetch waiting for fetch_min_bytes."""


class RedisSettings(_Section, kw_only=True):
    secrets = ("url",)  # may carry a password
    url: str = "redis://127.0.0.1:6379/0"
    """Redis URL; `router dev` falls back to a private redis-server when it does not answer."""
    cluster: bool = False
    """Treat the URL as a Redis Cluster seed node."""
    prefix: str = "rt"
    """Key prefix, so several deployments can share one Redis."""
    timeout_ms: int = 50
    """Socket timeout for request-path Redis calls; beyond it the API answers degraded."""
    breaker_reset_ms: int = 1_000
    """After 3 consecutive Redis faults the API skips Redis (degraded) this long, then probes once."""
    audit_retention_days: int = 180
    """A customer's audit stream (recent decisions, capped at 100) expires this long after its last record."""


class StreamSettings(_Section, kw_only=True):
    lateness_s: int = 86_400
    """Events older than (newest event time of the customer - this) are too late: counted, dead-lettered."""
    batch_max: int = 5_000
    """Maximum records per getmany() batch."""
    poll_timeout_ms: int = 200
    """getmany() timeout."""
    churn_alert_threshold: float = 0.70
    """Churn probability whose upward crossing emits one alert."""
    stuck_after_s: float = 30.0
    """Consumer readiness fails when its loop did nothing for this long (no poll, no batch attempt running or ended)."""
    max_future_s: int = 3_600
    """Events stamped further ahead of the consumer's clock are dead-lettered (a clock bug must not freeze a customer)."""
    alert_rearm_margin: float = 0.05
    """After an alert, churn must fall this far below the threshold before another can fire."""
    health_port: int = 9101
    """Consumer's /metrics and /health/* port (0 disables it, e.g. for several consumers on one host)."""
    health_host: str = "127.0.0.1"
    """Interface of the consumer's health server."""
    lanes: int = 2
    """Customer-disjoint parts of a batch folded concurrently, so one part's Redis round trip overlaps another's fold (at most; one per 200 records)."""
    cache_customers: int = 20_000
    """Customers whose last written record the consumer keeps in memory (no Redis read for their next events; 0 = off)."""
    sweep_interval_s: float = 30.0
    """Seconds between sweeps that rescore the customers of this consumer's partitions whose score is due (0 = off)."""
    sweep_batch: int = 250
    """Customers a sweep step reads, scores and writes (one model call; a step holds the consumer's event loop ~5-10 ms)."""
    sweep_max_age_s: int = 86_400
    """A score is rescored at the latest this long after it was computed, even while the model's answer stays the same."""


class ModelSettings(_Section, kw_only=True):
    path: str = str(_ROOT / "models" / "churn-v1.onnx")
    """ONNX churn model; its model card (.json) sits beside it."""
    shadow_path: str = ""
    """Candidate ONNX model scored in shadow by the consumer beside the live one (empty: none)."""
    horizon_days: int = 90
    """Horizon the churn probability refers to."""
    default_margin_rate: float = 0.3
    """Margin assumed for orders that did not report one."""
    subscription_margin_rate: float = 0.8
    """Share of MRR that is margin (CLV counts margin, not revenue)."""
    annual_discount_rate: float = 0.10
    """Discount rate for CLV's expected future margin."""
    max_lifetime_months: int = 120
    """Cap on expected remaining lifetime used by CLV."""
    follow_s: float = 2.0
    """Seconds between checks of the model (and, in consumers, the policy) an admin reload announced to every process (0 = only at start)."""
    business: str = "subscription"
    """subscription (churn = cancelled) or transactional (churn = no purchase within the horizon): a model whose card's label.business differs is refused."""
    promote_margin: float = 0.005
    """`router retrain` promotes a candidate only if its holdout ROC-AUC beats the live model's by at least this much (and its Brier score is no worse)."""
    nba_control_share: float = 0.05
    """Share of known customers (0-1, fixed per customer by a keyed hash) whose decisions get the policy's standard action instead of the next-best-actions: the control group of `router nba-report`."""


class PolicySettings(_Section, kw_only=True):
    path: str = str(_ROOT / "router" / "policy" / "default.toml")
    """Versioned routing policy (tiers, SLA clocks, escalation, next-best-actions)."""


class IdentitySettings(_Section, kw_only=True):
    secrets = ("hash_key",)
    hash_key: str = "dev-only-identity-key-change-me"
    """Secret key of the keyed hashes (BLAKE2b) of phone numbers, e-mails and customer ids: 16-64 random characters; the default works only in dev mode."""
    default_region: str = "DE"
    """Region assumed for phone numbers written without a country code."""


class ApiSettings(_Section, kw_only=True):
    host: str = "127.0.0.1"
    """Interface uvicorn binds."""
    port: int = 8000
    """Port uvicorn binds."""
    workers: int = 1
    """uvicorn worker processes."""
    max_body_bytes: int = 65_536
    """Request bodies above this get 413."""
    log_level: str = "info"
    """Log level of the service."""
    bench_endpoints: bool = False
    """Serve POST /bench/snapshot (the snapshot-only floor of loadtests.bench_serve); never in production."""
    settle_heap: bool = True
    """Freeze the worker's start-up heap and collect young objects less often once the app is up (GC pauses)."""
    fast_classify: bool = True
    """Answer ordinary POST /v1/classify requests (X-API-Key, JSON body with a content-length) on a direct ASGI path (router.api.fast) with the same checks and answers; the others and every error go through Litestar; off: all of them do."""
    cors_origins: str = ""
    """Browser origins (comma-separated, e.g. `https://cti.example.com`) allowed to call the API cross-origin; empty: CORS off."""
    events_batch_max: int = 500
    """Most events one POST /v1/events may carry (more: 400, nothing produced)."""
    events_max_body_bytes: int = 1_048_576
    """Body limit of POST /v1/events and the Stripe and Intercom webhooks (413 above it); other routes use max_body_bytes."""
    schema_requires_key: bool = False
    """Serve /schema/* (OpenAPI document, Swagger UI) only with an API key of any scope; off: open to whoever reaches the port (the contract, no data)."""


class AuthSettings(_Section, kw_only=True):
    secrets = ("keys",)
    keys: str = ""
    """API keys `name:scope+scope:secret[:expires=YYYY-MM-DD]`, comma-separated; scopes helpdesk, telephony, chatbot, events, ops, admin."""
    dev_mode: bool = False
    """Local development only: without keys accept the dev key `router-dev-key` (all scopes) and the default identity key; refused unless the API binds a loopback address."""
    rate_per_s: float = 200.0
    """Sustained requests per second per API key and worker process (token bucket); beyond it 429."""
    burst: int = 400
    """Requests per API key and worker that may arrive at once before the rate applies."""


class ConsoleSettings(_Section, kw_only=True):
    secrets = ("simulation_redis_url",)  # may carry a password
    session_hours: float = 8.0
    """Lifetime of an operations-console session (cookie and server side) after sign-in."""
    simulation_cpu_share: float = 0.2
    """Share of one core a policy simulation started from the console may use (it sleeps between chunks)."""
    simulation_redis_url: str = ""
    """Redis a policy simulation reads customers and audited decisions from, e.g. a replica, so the scan stays off the Redis that serves decisions; empty: the API's Redis. Progress, report and policy versions stay on the API's Redis."""


class WebhookSettings(_Section, kw_only=True):
    secrets = ("zendesk_secret", "generic_secret", "standard_secret", "intercom_secret", "stripe_secret")
    zendesk_secret: str = ""
    """Signing secret of the Zendesk webhook (empty: the Zendesk endpoint answers 403)."""
    generic_secret: str = ""
    """Deprecated (removed in the next release): HMAC secret of the generic webhook's `X-Router-Signature` (empty: refused)."""
    standard_secret: str = ""
    """Standard Webhooks secret `whsec_<base64>` of the generic webhook (`webhook-signature`; empty: refused)."""
    intercom_secret: str = ""
    """Client secret of the Intercom app whose notifications are verified (`X-Hub-Signature`; empty: 403)."""
    stripe_secret: str = ""
    """Signing secret `whsec_...` of the Stripe webhook endpoint (`Stripe-Signature`; empty: 403)."""
    stripe_customer_field: str = "customer_id"
    """Metadata field (subscription, invoice or customer) holding your customer id; absent: Stripe's `cus_...` id is used."""
    stripe_currency: str = "EUR"
    """Currency the MRR and payment amounts are kept in; Stripe amounts in it are taken as they are."""
    stripe_rates: str = ""
    """Fixed rates `USD=0.92,GBP=1.17` (one unit in `stripe_currency`); events in another currency get 422."""
    max_age_s: int = 300
    """Signed webhooks whose timestamp is further than this from now are stale; replays are refused until timestamp + this."""


class HandoffSettings(_Section, kw_only=True):
    max_bot_turns: int = 8
    """Bot turns after which the conversation goes to a person."""
    max_failed_intents: int = 2
    """Intents the bot failed to recognise after which it hands over."""
    negative_sentiment: float = -0.4
    """Conversation sentiment (-1..1) at or below which the bot hands over."""
    bot_retry_tiers: str = ""
    """Tiers (comma-separated) the bot may keep for one more try when they ask for a person; VIP never."""
    fallback_queue: str = "support"
    """Queue of a handover when the policy's target for the contact is the bot itself."""
    fallback_role: str = "junior_agent"
    """Role of a handover when the policy's target for the contact is the bot itself."""


class ConnectorSettings(_Section, kw_only=True):
    secrets = ("rt_token", "zendesk_token", "freshdesk_api_key", "freshdesk_inbound_token")
    config_path: str = ""
    """Connector file (TOML): the helpdesks decisions are written back to and their mapping tables (empty: none)."""
    rt_token: str = ""
    """Request Tracker auth token (`Authorization: token ...`) of the RT user the connector acts as."""
    zendesk_email: str = ""
    """Zendesk agent e-mail for API-token auth (`{email}/token:{token}`); empty when zendesk_token is an OAuth token."""
    zendesk_token: str = ""
    """Zendesk API token (with zendesk_email) or OAuth access token (without)."""
    freshdesk_api_key: str = ""
    """Freshdesk API key of the agent the connector acts as."""
    freshdesk_inbound_token: str = ""
    """Token the Freshdesk webhook sends (`X-Router-Token` header or Basic password); empty: that endpoint answers 403."""
    max_attempts: int = 10
    """Attempts of one write-back before it is dead-lettered with its last cause."""
    backoff_base_s: float = 1.0
    """First retry delay of a failed write-back; doubles per attempt (with jitter) unless the helpdesk sent Retry-After."""
    backoff_max_s: float = 60.0
    """Longest delay between two attempts of one write-back (a helpdesk's Retry-After is honoured up to an hour)."""
    http_timeout_s: float = 10.0
    """Timeout of one request to a helpdesk API."""
    concurrency: int = 4
    """Write-backs in flight per connector in one `router connect` process."""
    reclaim_after_s: float = 120.0
    """A write-back a crashed `router connect` took and never finished is taken over after this long."""
    dedupe_s: int = 600
    """A ticket is routed at most once per connector within this window (duplicate deliveries, trigger loops)."""
    health_port: int = 9102
    """`router connect`'s /metrics and /health/* port, on ROUTER_STREAM_HEALTH_HOST (0 disables it)."""


class Settings(msgspec.Struct, kw_only=True):
    """Every subsystem's settings; ``repr`` masks the secrets."""

    kafka: KafkaSettings = msgspec.field(default_factory=KafkaSettings)
    redis: RedisSettings = msgspec.field(default_factory=RedisSettings)
    stream: StreamSettings = msgspec.field(default_factory=StreamSettings)
    model: ModelSettings = msgspec.field(default_factory=ModelSettings)
    policy: PolicySettings = msgspec.field(default_factory=PolicySettings)
    identity: IdentitySettings = msgspec.field(default_factory=IdentitySettings)
    api: ApiSettings = msgspec.field(default_factory=ApiSettings)
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)
    console: ConsoleSettings = msgspec.field(default_factory=ConsoleSettings)
    webhooks: WebhookSettings = msgspec.field(default_factory=WebhookSettings)
    handoff: HandoffSettings = msgspec.field(default_factory=HandoffSettings)
    connectors: ConnectorSettings = msgspec.field(default_factory=ConnectorSettings)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``ROUTER_<SUBSYSTEM>_<FIELD>`` variables (and ``REDIS_URL``)."""
        env = os.environ if environ is None else environ
        raw: dict[str, dict[str, Any]] = {}
        for section in cls.__struct_fields__:
            values: dict[str, Any] = {}
            kind = _section_type(section)
            for field in kind.__struct_fields__:
                name = f"ROUTER_{section}_{field}".upper()
                if name in env:
                    values[field] = env[name]
                if field in kind.secrets and env.get(f"{name}_FILE"):
                    if env.get(name):
                        raise SystemExit(f"invalid configuration: set {name} or {name}_FILE, not both")
                    values[field] = _read_secret_file(f"{name}_FILE", env[f"{name}_FILE"])
            raw[section] = values
        if "url" not in raw["redis"] and env.get("REDIS_URL"):
            raw["redis"]["url"] = env["REDIS_URL"]
        try:
            return msgspec.convert(raw, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise SystemExit(f"invalid configuration: {exc}") from None


def _read_secret_file(variable: str, path: str) -> str:
    """A secret from a file (a Docker or Kubernetes secret): its content without surrounding whitespace."""
    try:
        return Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise SystemExit(f"invalid configuration: {variable} names a file that cannot be read ({reason})") from None


_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
# Words placeholders are made of; long enough that a random secret practically never contains one.
_PLACEHOLDER_MARKERS = (
    "change-me",
    "changeme",
    "change_me",
    "placeholder",
    "example",
    "replace",
    "dev-only",
    "insecure",
)


def placeholder_reason(secret: str) -> str | None:
    """Why ``secret`` cannot be a real secret (a placeholder, too short, too regular), or None.

    The reason never contains the secret. Heuristics that a generated secret passes:
    16+ characters, none of the words placeholders are made of ("change-me", "replace",
    "example", "placeholder", ...), not one short pattern repeated, at least 6 distinct
    characters and 2 bits of entropy per character.
    """
    if len(secret) < 16:
        return "is shorter than 16 characters"
    lowered = secret.lower()
    for marker in _PLACEHOLDER_MARKERS:
        if marker in lowered:
            return f"is a placeholder (contains {marker!r})"
    n = len(secret)
    for unit in range(1, n // 2 + 1):
        if n % unit == 0 and secret[:unit] * (n // unit) == secret:
            return "repeats one short pattern"
    counts = collections.Counter(secret)
    entropy = -sum(c / n * math.log2(c / n) for c in counts.values())
    if len(counts) < 6 or entropy < 2.0:
        return "has too little entropy (too few distinct characters)"
    return None


def unsafe_reasons(settings: Settings, *, binds_api: bool) -> list[str]:
    """What keeps ``settings`` from running a service (empty when nothing does).

    Dev mode accepts the built-in identity key and the dev API key, so it must not be reachable
    from the network (``binds_api``: the process serves the API on ``ROUTER_API_HOST``). Outside
    dev mode the identity hash key and any webhook secret that is set must be real secrets: a
    public or guessable identity key makes the phone and e-mail index reversible by enumeration.
    """
    problems: list[str] = []
    if settings.auth.dev_mode:
        if binds_api and settings.api.host not in _LOOPBACK:
            problems.append(
                f"ROUTER_AUTH_DEV_MODE=true serves the public dev key and must not listen on "
                f"{settings.api.host!r}: bind ROUTER_API_HOST to 127.0.0.1, ::1 or localhost, "
                "or turn dev mode off and set ROUTER_AUTH_KEYS"
            )
        return problems
    reason = placeholder_reason(settings.identity.hash_key)
    if reason:
        problems.append(
            f"ROUTER_IDENTITY_HASH_KEY {reason}: set it (or ROUTER_IDENTITY_HASH_KEY_FILE) to a random "
            "secret of 32+ characters, e.g. `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`; "
            "the built-in default works only with ROUTER_AUTH_DEV_MODE=true"
        )
    for field in WebhookSettings.secrets:
        value = getattr(settings.webhooks, field)
        reason = placeholder_reason(value) if value else None
        if reason:
            problems.append(f"ROUTER_WEBHOOKS_{field.upper()} {reason}: set the real signing secret or leave it empty")
    inbound = settings.connectors.freshdesk_inbound_token
    reason = placeholder_reason(inbound) if inbound else None
    if reason:
        problems.append(f"ROUTER_CONNECTORS_FRESHDESK_INBOUND_TOKEN {reason}: set a random token or leave it empty")
    return problems


def require_safe(settings: Settings, *, binds_api: bool) -> None:
    """Exit (``SystemExit`` with every reason) unless :func:`unsafe_reasons` finds nothing.

    The API's factory and the consumer call it before they connect to anything.
    """
    problems = unsafe_reasons(settings, binds_api=binds_api)
    if problems:
        raise SystemExit("invalid configuration: " + "; ".join(problems))


def to_env(settings: Settings) -> dict[str, str]:
    """The ``ROUTER_*`` variables that reproduce ``settings`` in a child process."""
    env: dict[str, str] = {}
    for section in Settings.__struct_fields__:
        sub = getattr(settings, section)
        for field in sub.__struct_fields__:
            value = getattr(sub, field)
            env[f"ROUTER_{section}_{field}".upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def _section_type(section: str) -> type[_Section]:
    types: dict[str, type[_Section]] = {
        "kafka": KafkaSettings,
        "redis": RedisSettings,
        "stream": StreamSettings,
        "model": ModelSettings,
        "policy": PolicySettings,
        "identity": IdentitySettings,
        "api": ApiSettings,
        "auth": AuthSettings,
        "console": ConsoleSettings,
        "webhooks": WebhookSettings,
        "handoff": HandoffSettings,
        "connectors": ConnectorSettings,
    }
    return types[section]


def settings_table() -> str:
    """Markdown table of every variable, its default and its docstring (for the README)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(__import__(__name__, fromlist=["x"])))
    docs: dict[tuple[str, str], str] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            body = node.body
            for i, stmt in enumerate(body):
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and i + 1 < len(body):
                    nxt = body[i + 1]
                    if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                        docs[(node.name, stmt.target.id)] = str(nxt.value.value)
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    defaults = Settings()
    for section in Settings.__struct_fields__:
        sub = getattr(defaults, section)
        for field in sub.__struct_fields__:
            default = getattr(sub, field)
            shown = str(default).replace(str(_ROOT), ".")
            doc = docs.get((type(sub).__name__, field), "")
            if field in sub.secrets:
                doc += f" Secret: also read from the file `ROUTER_{section.upper()}_{field.upper()}_FILE` names."
            rows.append(f"| `ROUTER_{section.upper()}_{field.upper()}` | `{shown}` | {doc} |")
    return "\n".join(rows)
