"""The latency histograms resolve what the service's latencies actually are: tens of microseconds."""

from __future__ import annotations

import pytest
from prometheus_client import Histogram
from prometheus_client.metrics import MetricWrapperBase

from router.ops import metrics


def _quantile(q: float, histogram: MetricWrapperBase) -> float:
    """``histogram_quantile(q, ...)`` exactly as Prometheus computes it (linear within the bucket)."""
    (family,) = histogram.collect()
    buckets = [(float(s.labels["le"]), s.value) for s in family.samples if s.name.endswith("_bucket")]
    total = buckets[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    raise AssertionError("rank beyond the last bucket")


@pytest.mark.parametrize(
    "histogram",
    [metrics.REQUEST_SECONDS, metrics.DECISION_SECONDS, metrics.MODEL_SECONDS, metrics.REDIS_SECONDS],
    ids=lambda h: h._name,
)
def test_latency_histograms_resolve_tens_of_microseconds(histogram: Histogram) -> None:
    # A private copy with the same buckets: the module-level metric must not see test samples.
    copy = Histogram(histogram._name, "copy", buckets=histogram._upper_bounds[:-1], registry=None)
    for i in range(1000):
        copy.observe(20e-6 + (i % 10) * 1e-6)  # 20-29 us: a decision, an inference, a Redis round trip
    p50, p99 = _quantile(0.5, copy), _quantile(0.99, copy)
    # with a lowest bucket of 100 us these read 50 us and 99 us, whatever the real latency
    assert 20e-6 <= p50 <= 35e-6 and 20e-6 <= p99 <= 35e-6, (p50, p99)


def test_the_slo_threshold_is_a_bucket_boundary() -> None:
    # deploy/prometheus/recording.yml counts requests under le="0.01" (10 ms)
    assert 0.01 in metrics.LATENCY_BUCKETS
    assert len(metrics.LATENCY_BUCKETS) <= 25  # series per label set stay few
    assert list(metrics.LATENCY_BUCKETS) == sorted(metrics.LATENCY_BUCKETS)
