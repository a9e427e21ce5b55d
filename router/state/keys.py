"""Every Redis key the service uses, built in one place.

``P`` is the configured prefix, ``H`` the keyed hash of a customer id (or of a phone number or
e-mail for the index), ``T`` the first two hex digits of a hash: the Redis Cluster hash tag::

    P:{T}:c:H        hash    s = snapshot (msgpack, zlib when long), m = applied offsets per
                             partition, k = derived scores (msgpack), l = 1 while the customer
                             is live, 0 once erased (a tombstone; absent in hashes written
                             before it existed, which count as live)
    P:{T}:o:H        string  the customer's tier override (msgpack), Redis TTL = its expiry
    P:{T}:a:H        stream  the customer's recent decisions and admin actions (audit); exists
                             only while the customer is live, capped in length, expires
    P:{T}:p:Hphone   string  customer id of a phone number (E.164, keyed hash)
    P:{T}:e:Hemail   string  customer id of an e-mail address
    P:{T}:clvh       hash    CLV histogram shard: bin -> customers (counts may be negative)
    P:{T}:kpi        hash    portfolio counter shard (totals, churn bins, service cost, per day)
    P:{T}:due:N      zset    customers of partition N by when their score is due for a rescore
                             (member H, score epoch second; see router.ingest.sweep)
    P:{audit}:decisions  stream  every decision and admin action (keyed hashes only)
    P:{pf}:churn-trend   hash    day -> (mean churn risk, high-risk share)
    P:{wh}:r:D       string  a signed webhook already processed (D = digest of its signature)
    P:{shadow}:report    string  the shadow model's comparison with the live one (JSON)
    P:{cfg}:active:K     string  the model (K = model) or policy (K = policy) every process follows (JSON)
    P:{off}:G:topic  hash    partition -> next offset to read (consumer group G)
    P:{pub}:dl:O:p:n string  a dead letter for record n of partition p of topic O was published
    P:{pub}:al:A     string  churn alert A was published (both expire after a week)
    P:{cx}:ob:C          stream  connector C's outbox: write-backs waiting or in flight (group "writeback")
    P:{cx}:ob:C:later    zset    write-backs of C waiting for their next attempt (score = due, ms)
    P:{cx}:ob:C:dead     stream  write-backs of C given up on, with their last cause
    P:{cx}:ob:C:landed   stream  recent write-backs of C that landed (ticket, decision, times), capped
    P:{cx}:ob:C:health   hash    C's last landing, last failure and last poll
    P:{cx}:ob:C:mark     string  the highest helpdesk ticket id C has routed (followed helpdesks: RT)
    P:{cx}:dd:C:T        string  ticket T of C was routed within the dedupe window
    P:{policy}:active    string  number of the policy version in force (every API worker polls it)
    P:{policy}:seq       string  last policy version number handed out
    P:{policy}:v:N       hash    policy version N: TOML text, author, time, note, version string
    P:{policy}:history   list    policy version numbers, oldest first
    P:{console}:s:D      hash    a console session (D = SHA-256 of the session cookie), TTL = expiry
    P:{console}:sim:J    hash    a policy simulation job J: draft, progress, result; TTL a day
    P:{console}:sim-lock string  the job that is running (one simulation at a time)

A customer's snapshot, override, audit stream and the histogram and counter shards its write
lands in share one hash tag, so one Lua script updates or reads them atomically even on Redis
Cluster; so do all of a connector's outbox keys (tag ``cx``), which one script moves a
write-back between. Nothing is keyed by a clear identifier (``T`` is the helpdesk's ticket
number, and outbox entries name tickets and decisions, never customers). Erasure deletes
:meth:`Keys.of_customer`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["HIST_SHARDS", "Keys", "customer_hash_of"]

HIST_SHARDS = 256
"""Shards of the CLV histogram and of the portfolio counters (one per two-hex-digit hash tag)."""


class Keys:
    """Key names for one prefix; the consumer, the API and erasure all ask here."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    # -- one customer (hash tag of the customer's keyed hash) -------------------------------

    def customer(self, h: str) -> str:
        return f"{self.prefix}:{{{h[:2]}}}:c:{h}"

    def override(self, h: str) -> str:
        return f"{self.prefix}:{{{h[:2]}}}:o:{h}"

    def customer_audit(self, h: str) -> str:
        return f"{self.prefix}:{{{h[:2]}}}:a:{h}"

    def phone(self, h: str) -> str:
        return f"{self.prefix}:{{{h[:2]}}}:p:{h}"

    def email(self, h: str) -> str:
        return f"{self.prefix}:{{{h[:2]}}}:e:{h}"

    def of_customer(self, h: str, phones: Iterable[str] = (), emails: Iterable[str] = ()) -> list[str]:
        """Every key that holds data about the customer with keyed hash ``h``.

        ``phones`` and ``emails`` are the keyed hashes the customer's snapshot lists. Erasure
        rewrites the snapshot hash as a tombstone (the consumer, exactly once) and deletes all
        the others; a key this list does not name cannot exist, which a test checks on a real Redis.
        """
        return [
            self.customer(h),
            self.override(h),
            self.customer_audit(h),
            *(self.phone(p) for p in phones),
            *(self.email(e) for e in emails),
        ]

    # -- shards (a customer write lands in the shard of its tag, or 00 on a single Redis) ---

    def histogram(self, tag: str) -> str:
        return f"{self.prefix}:{{{tag[:2]}}}:clvh"

    def histogram_shard(self, shard: int) -> str:
        return f"{self.prefix}:{{{shard:02x}}}:clvh"

    def kpi(self, tag: str) -> str:
        return f"{self.prefix}:{{{tag[:2]}}}:kpi"

    def kpi_shard(self, shard: int) -> str:
        return f"{self.prefix}:{{{shard:02x}}}:kpi"

    def due(self, tag: str, partition: int) -> str:
        return f"{self.prefix}:{{{tag[:2]}}}:due:{partition}"

    def due_shard(self, shard: int, partition: int) -> str:
        return f"{self.prefix}:{{{shard:02x}}}:due:{partition}"

    # -- process-wide -------------------------------------------------------------------------

    def audit(self) -> str:
        return f"{self.prefix}:{{audit}}:decisions"

    def churn_trend(self) -> str:
        return f"{self.prefix}:{{pf}}:churn-trend"

    def webhook_replay(self, digest: str) -> str:
        return f"{self.prefix}:{{wh}}:r:{digest}"

    def shadow_report(self) -> str:
        return f"{self.prefix}:{{shadow}}:report"

    def offsets(self, group: str, topic: str) -> str:
        return f"{self.prefix}:{{off}}:{group}:{topic}"

    def dead_letter_sent(self, topic: str, partition: int, offset: int) -> str:
        return f"{self.prefix}:{{pub}}:dl:{topic}:{partition}:{offset}"

    def alert_sent(self, alert_id: str) -> str:
        return f"{self.prefix}:{{pub}}:al:{alert_id}"

    def active(self, kind: str) -> str:
        """What every process should run: ``kind`` is ``model`` or ``policy``."""
        return f"{self.prefix}:{{cfg}}:active:{kind}"

    # -- connectors (one hash tag: a script moves a write-back between these keys) ----------

    def outbox(self, connector: str) -> str:
        return f"{self.prefix}:{{cx}}:ob:{connector}"

    def outbox_later(self, connector: str) -> str:
        return f"{self.prefix}:{{cx}}:ob:{connector}:later"

    def outbox_dead(self, connector: str) -> str:
        return f"{self.prefix}:{{cx}}:ob:{connector}:dead"

    def outbox_landed(self, connector: str) -> str:
        return f"{self.prefix}:{{cx}}:ob:{connector}:landed"

    def connector_health(self, connector: str) -> str:
        return f"{self.prefix}:{{cx}}:ob:{connector}:health"

    def connector_mark(self, connector: str) -> str:
        return f"{self.prefix}:{{cx}}:ob:{connector}:mark"

    def ticket_routed(self, connector: str, ticket: str) -> str:
        return f"{self.prefix}:{{cx}}:dd:{connector}:{ticket}"

    # -- scans (the policy simulation reads the whole population) -----------------------------

    def customer_pattern(self) -> str:
        """SCAN pattern of every customer hash (the prefix's glob characters escaped)."""
        return f"{_glob_escape(self.prefix)}:{{??}}:c:*"

    def override_pattern(self) -> str:
        """SCAN pattern of every tier override."""
        return f"{_glob_escape(self.prefix)}:{{??}}:o:*"

    # -- policy versions (every API worker follows the active one) ----------------------------

    def policy_active(self) -> str:
        return f"{self.prefix}:{{policy}}:active"

    def policy_seq(self) -> str:
        return f"{self.prefix}:{{policy}}:seq"

    def policy_version(self, number: int) -> str:
        return f"{self.prefix}:{{policy}}:v:{number}"

    def policy_history(self) -> str:
        return f"{self.prefix}:{{policy}}:history"

    # -- the operations console ---------------------------------------------------------------

    def console_session(self, digest: str) -> str:
        return f"{self.prefix}:{{console}}:s:{digest}"

    def simulation(self, job_id: str) -> str:
        return f"{self.prefix}:{{console}}:sim:{job_id}"

    def simulation_lock(self) -> str:
        return f"{self.prefix}:{{console}}:sim-lock"


def customer_hash_of(key: str | bytes) -> str:
    """The keyed hash ``H`` of a key built by :meth:`Keys.customer` or :meth:`Keys.override`."""
    text = key.decode() if isinstance(key, bytes) else key
    return text.rsplit(":", 1)[1]


_GLOB = re.compile(r"([*?\[\]\\])")


def _glob_escape(text: str) -> str:
    return _GLOB.sub(r"\\\1", text)
