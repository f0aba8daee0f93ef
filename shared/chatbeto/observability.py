"""Prometheus metrics shared by the services (one registry per process)."""

from __future__ import annotations

from bisect import bisect_left

from prometheus_client import Counter, Histogram

HTTP_REQUESTS = Counter(
    "chatbeto_http_requests_total",
    "HTTP requests by route and status",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "chatbeto_http_request_duration_seconds",
    "HTTP request latency",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
MESSAGES_PUBLISHED = Counter(
    "chatbeto_messages_published_total", "Messages confirmed by the broker", ["routing_key"]
)
PUBLISH_FAILURES = Counter(
    "chatbeto_publish_failures_total", "Publishes the broker did not confirm", ["routing_key"]
)
MESSAGES_CONSUMED = Counter(
    "chatbeto_messages_consumed_total", "Messages consumed by outcome", ["queue", "outcome"]
)
ROWS_STORED = Counter("chatbeto_rows_stored_total", "Rows committed by workers", ["table"])
ROWS_DEAD_LETTERED = Counter(
    "chatbeto_rows_dead_lettered_total",
    "Records a worker could not store, dead-lettered alone (the rest of their message stored)",
    ["table"],
)


class RequestStats:
    """HTTP requests counted in plain ints, added to `HTTP_REQUESTS` / `HTTP_LATENCY` by `flush`.

    prometheus_client counts under a lock per value (a counter and a histogram were 2.6 us of
    every ingest request); here a request is a dict update and a bisect. `flush` runs before
    each scrape of this process and every `FLUSH_INTERVAL_SECONDS` (what the other workers of a
    multi-process gateway show a scrape). It adds to the histogram's own buckets: there is no
    public call to add many observations at once (tests/test_request_stats.py checks the
    scraped text against prometheus_client's own `observe`).
    """

    FLUSH_INTERVAL_SECONDS = 1.0

    def __init__(self) -> None:
        self._bounds = tuple(HTTP_LATENCY._upper_bounds)
        self._counts: dict[tuple[str, str, int], int] = {}
        # route -> [sum of seconds, then one count per bucket (the last one +Inf)]
        self._latency: dict[str, list[float]] = {}

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1
        latency = self._latency.get(route)
        if latency is None:
            latency = self._latency[route] = [0.0] * (len(self._bounds) + 1)
        latency[0] += seconds
        # The first bucket whose bound is at least `seconds` (prometheus_client's `<=`).
        latency[bisect_left(self._bounds, seconds) + 1] += 1

    def flush(self) -> None:
        counts, self._counts = self._counts, {}
        latencies, self._latency = self._latency, {}
        for (method, route, status), n in counts.items():
            HTTP_REQUESTS.labels(method, route, str(status)).inc(n)
        for route, latency in latencies.items():
            child = HTTP_LATENCY.labels(route)
            child._sum.inc(latency[0])
            for bucket, observed in zip(child._buckets, latency[1:], strict=True):
                if observed:
                    bucket.inc(observed)


REQUEST_STATS = RequestStats()
"""This process's HTTP request counts, not yet flushed (one per process, as the metrics are)."""
