"""Prometheus metrics shared by the services (one registry per process)."""

from __future__ import annotations

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
