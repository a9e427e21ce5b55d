"""Garbage-collector settings for the long-running processes (consumer, API workers)."""

from __future__ import annotations

import gc

__all__ = ["settle_heap"]


def settle_heap() -> None:
    """Hide everything allocated at start-up (modules, model, clients) from the cyclic collector.

    Called once a process has loaded what it keeps (the consumer before its first poll, an API
    worker after its lifespans). Every consumer batch allocates tens of thousands of
    short-lived containers (events, snapshots, buckets); each young-generation collection they
    trigger also walked the long-lived heap and, with the default thresholds, took a quarter of
    the consumer's CPU (12.3k -> 17.7k events/s with the collector off in
    ``loadtests.bench_ingest``); in an API worker, settling the heap cut classify's CPU per
    request by about a fifth (paired runs in BENCHMARKS.md). Snapshots and requests leave few
    cycles: reference counting frees them. The young-generation threshold counts *net*
    allocations: at 100,000 the collector runs only when that many containers outlive their
    batch (a leak or cycles piling up), not several times per batch (55 collections of ~1.5 ms
    per 40k events at 10,000; none at 100,000).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 10, 10)
