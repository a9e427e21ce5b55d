"""A short soak (about 45 s): constant mixed load, no errors, bounded memory, lag back to 0.

The same driver as ``python -m loadtests.soak --minutes 30`` (see BENCHMARKS.md), on the
session's broker and Redis with this test's own topics and key prefix.
"""

from __future__ import annotations

from pathlib import Path

from loadtests.soak import SoakConfig, run_soak
from tests.conftest import SettingsFactory


def test_short_soak_has_no_errors_and_bounded_memory(settings: SettingsFactory, tmp_path: Path) -> None:
    s = settings(kafka={"partitions": 4})
    cfg = SoakConfig(seconds=45, events_per_s=200, requests_per_s=50, customers=1_000, interval_s=5, max_growth_mb=48)
    report = run_soak(s, cfg, tmp_path)
    first, last = report.samples[0], report.samples[-1]
    print(
        f"\n[soak] {cfg.seconds:.0f} s: requests={report.requests} errors={report.errors} 5xx={report.server_errors} "
        f"events={report.events} final_lag={report.final_lag} api_rss={first.api_rss_mb}->{last.api_rss_mb} MB "
        f"consumer_rss={first.consumer_rss_mb}->{last.consumer_rss_mb} MB redis={first.redis_used_mb}->"
        f"{last.redis_used_mb} MB growth_after_warmup api={report.api_growth_mb} consumer={report.consumer_growth_mb} "
        f"p99_last={last.p99_ms} ms"
    )
    assert report.requests >= cfg.requests_per_s * cfg.seconds * 0.8, "the load did not keep its rate"
    assert report.events >= cfg.events_per_s * cfg.seconds * 0.8
    assert report.problems() == []
