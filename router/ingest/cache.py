"""The consumer's cache of the records it wrote last: no Redis read for a customer's next events."""

from __future__ import annotations

from collections import OrderedDict

from router.state.records import CustomerRecord, WriteOp, decode_record

__all__ = ["RecordCache"]


class RecordCache:
    """The records this consumer wrote last, for its next events of the same customers.

    Safe because every write is a compare-and-set on the stored offsets: if anyone else wrote
    a customer since (a member that took the partition over), the next write from a stale
    entry fails and the customer is read from Redis again. Entries are the bytes that were
    stored, decoded when taken: no shared mutable snapshot, and nothing for the cyclic
    collector to walk (20k cached snapshot objects cost more in collections than the reads
    they saved). A customer that lost its compare-and-set is not put back; a failed batch or a
    rebalance clears everything. Least recently written entries go first.
    """

    __slots__ = ("_entries", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # OrderedDict: evicting the oldest entry of a plain dict scans past every hole that earlier
        # evictions left at its front (quadratic; it made the cache slower than Redis reads)
        self._entries: OrderedDict[str, tuple[bytes, bytes, bytes]] = OrderedDict()

    def take(self, customer_key: str) -> CustomerRecord | None:
        """The cached record, removed from the cache (a successful write puts it back)."""
        stored = self._entries.pop(customer_key, None)
        return None if stored is None else decode_record(stored)

    def put(self, op: WriteOp) -> None:
        """Remember what a successful write stored."""
        if self.capacity <= 0 or op.stored is None:
            return
        entries = self._entries
        entries[op.customer_key] = op.stored
        if len(entries) > self.capacity:
            entries.popitem(last=False)

    def discard(self, customer_key: str) -> None:
        """Forget a customer someone else (the sweep) may have written since."""
        self._entries.pop(customer_key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
