"""What Redis holds per customer, as typed records, and their stored bytes.

The consumer writes a :class:`WriteOp` per customer; readers get a :class:`CustomerRecord`.
Snapshots are msgpack (positional fields), zlib-compressed when long; scores are msgpack.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import msgspec

from router.core.reducer import Snapshot
from schemas.api import Override

__all__ = [
    "COMPRESS_SNAPSHOTS_OVER",
    "SWEEP_MARK",
    "Announcement",
    "CustomerRecord",
    "Scores",
    "WriteOp",
    "decode_override",
    "decode_record",
    "decode_scores",
    "decode_snapshot",
    "due_time",
    "encode_marks",
    "encode_override",
    "encode_scores",
    "encode_snapshot",
    "record_of",
]


class Scores(msgspec.Struct, array_like=True):
    """Scores derived from the snapshot when it was last written (not part of the fold)."""

    churn: float = 0.0
    clv: float = 0.0
    clv_bin: int | None = None
    alerted: bool = False
    """True while churn is above the alert threshold: an alert fires only on the upward crossing."""
    scored_at: int = 0
    model_id: str = ""
    """``ChurnModel.model_id`` of the model that computed ``churn`` ("" when none did)."""
    as_of: int = 0
    valid_until: int = 0
    """``churn`` is exactly what that model returns for this snapshot at any second in [as_of, valid_until)."""
    support_cost: float = 0.0
    """Support cost per year the CLV was computed with (the portfolio's service cost per tier)."""
    partition: int = -1
    """Partition of the events last written: the customer's due index entry is that partition's."""


class Announcement(msgspec.Struct, frozen=True, kw_only=True):
    """The model or policy file every process should run, as the last admin reload set it."""

    path: str
    sha256: str
    """SHA-256 of the file: a process loads the path only if its bytes are these (else it keeps its own)."""
    version: str
    at: float
    """Epoch seconds of the reload."""
    by: str
    """Name of the API key that reloaded."""


SWEEP_MARK = -1
"""Key in a record's offsets that counts its rescorings without an event (the sweep, see
``router.ingest.sweep``): a rescore changes the stored offsets too, so a writer that read the
record before it loses its compare-and-set instead of moving histogram entries it no longer owns."""


def due_time(scores: Scores, max_age_s: int) -> int:
    """When the sweep should rescore a customer: once the stored churn score stops being exactly the
    model's (``valid_until``), and at the latest ``max_age_s`` after it was computed (CLV moves with
    tenure even where no tree does; without a model, ``valid_until`` is 0)."""
    latest = max(scores.scored_at, scores.as_of) + max_age_s
    return min(scores.valid_until, latest) if scores.valid_until > scores.as_of else latest


class CustomerRecord(msgspec.Struct):
    """What Redis holds for one customer."""

    snapshot: Snapshot | None
    marks: dict[int, int]
    scores: Scores | None
    raw_marks: bytes | None
    """The stored offsets exactly as read, for compare-and-set."""


class WriteOp(msgspec.Struct):
    """One customer's atomic write, built by the consumer's batch planning."""

    customer_key: str
    expected_marks: bytes | None
    marks: dict[int, int]
    snapshot: Snapshot
    scores: Scores
    old_bin: int | None
    index_add: list[tuple[str, str]]
    """(index key, customer id) pairs to set."""
    index_remove: list[tuple[str, str]]
    """(index key, customer id) pairs to delete if they still point at this customer."""
    kpi: dict[str, float] = {}
    """Increments of portfolio counters (see :meth:`StateStore.portfolio`), applied with the snapshot."""
    partition: int = -1
    """Partition of the events written (the customer's); -1: none, the customer stays out of the due index."""
    due_at: int | None = None
    """When the sweep should rescore the customer (:func:`due_time`); None takes it out of the due index."""
    stored: tuple[bytes, bytes, bytes] | None = None
    """(offsets, snapshot, scores) exactly as :meth:`StateStore.apply` sent them (set by it)."""


COMPRESS_SNAPSHOTS_OVER = 512
"""Stored snapshots longer than this many bytes of msgpack are zlib-compressed."""
_enc = msgspec.msgpack.Encoder()
_snapshot_dec = msgspec.msgpack.Decoder(Snapshot)
_scores_dec = msgspec.msgpack.Decoder(Scores)
_marks_dec = msgspec.msgpack.Decoder(dict[int, int])
_override_dec = msgspec.msgpack.Decoder(Override)


def encode_snapshot(snap: Snapshot) -> bytes:
    """A snapshot as stored: msgpack, zlib-compressed when long.

    A customer with months of daily activity carries ~90 day buckets: ~1.6 KB of msgpack that
    zlib's fastest level shrinks about four times (~25 µs to compress, ~9 µs to decompress),
    taking the Redis hash from ~2.1 KB to ~0.9 KB. Short snapshots, most of them, stay as they are.
    """
    raw = _enc.encode(snap)
    return zlib.compress(raw, 1) if len(raw) > COMPRESS_SNAPSHOTS_OVER else raw


def decode_snapshot(raw: bytes) -> Snapshot:
    """The snapshot in stored bytes (compressed or not: msgpack of a Snapshot starts with an array
    header, 0x9X or 0xDC, a zlib stream with 0x78, so both read back without a flag)."""
    return _snapshot_dec.decode(zlib.decompress(raw) if raw[:1] == b"x" else raw)


def encode_marks(marks: dict[int, int]) -> bytes:
    """Applied offsets as stored (the compare-and-set compares these bytes)."""
    return _enc.encode(marks)


def encode_scores(scores: Scores) -> bytes:
    return _enc.encode(scores)


def decode_scores(raw: bytes | None) -> Scores | None:
    return _scores_dec.decode(raw) if raw else None


def encode_override(override: Override) -> bytes:
    return _enc.encode(override)


def decode_override(raw: bytes | None) -> Override | None:
    """The stored override, or None (absent, expired, or unreadable: never fail a decision on it)."""
    if not raw:
        return None
    try:
        return _override_dec.decode(raw)
    except msgspec.DecodeError:
        return None


def decode_record(stored: tuple[bytes, bytes, bytes]) -> CustomerRecord:
    """A record from the (offsets, snapshot, scores) bytes a write stored."""
    return record_of((stored[1], stored[0], stored[2]))


def record_of(row: Sequence[bytes | None]) -> CustomerRecord:
    """A record from the (snapshot, offsets, scores) fields as Redis returns them."""
    raw_snap, raw_marks, raw_scores = row
    return CustomerRecord(
        snapshot=decode_snapshot(raw_snap) if raw_snap else None,
        marks=_marks_dec.decode(raw_marks) if raw_marks else {},
        scores=_scores_dec.decode(raw_scores) if raw_scores else None,
        raw_marks=raw_marks,
    )
