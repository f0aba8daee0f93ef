"""HTTP request counts kept in plain ints (`chatbeto.observability.RequestStats`) reach
Prometheus exactly as prometheus_client's own counting would, and a scrape sees every request
answered before it."""

from __future__ import annotations

import re
import uuid

from chatbeto.observability import HTTP_LATENCY, HTTP_REQUESTS, RequestStats
from prometheus_client import REGISTRY, CollectorRegistry, Histogram

from tests.conftest import Client


def _samples(registry: CollectorRegistry, name: str, route: str) -> dict[tuple[str, str], float]:
    return {
        (sample.name, sample.labels.get("le", "")): sample.value
        for family in registry.collect()
        if family.name == name
        for sample in family.samples
        if sample.labels.get("route") == route and not sample.name.endswith("_created")
    }


def test_flushed_counts_equal_prometheus_own_observe() -> None:
    route = f"/test/{uuid.uuid4().hex}"
    seconds = [0.0, 0.0004, 0.001, 0.0011, 0.02, 0.3, 0.3, 7.5, 59.0, 61.0, 1e6]
    reference_registry = CollectorRegistry()
    reference = Histogram(
        HTTP_LATENCY._name,
        "reference",
        ["route"],
        buckets=HTTP_LATENCY._upper_bounds,
        registry=reference_registry,
    )
    stats = RequestStats()
    for n, value in enumerate(seconds):
        stats.record("POST", route, 202 if n % 2 else 503, value)
        reference.labels(route).observe(value)
    assert _samples(REGISTRY, HTTP_LATENCY._name, route) == {}  # nothing before the flush
    stats.flush()
    got = _samples(REGISTRY, HTTP_LATENCY._name, route)
    want = _samples(reference_registry, HTTP_LATENCY._name, route)
    assert got.keys() == want.keys() and len(got) == len(HTTP_LATENCY._upper_bounds) + 2
    for key, value in want.items():
        assert abs(got[key] - value) < 1e-9, key
    assert HTTP_REQUESTS.labels("POST", route, "202")._value.get() == 5
    assert HTTP_REQUESTS.labels("POST", route, "503")._value.get() == 6
    # A second flush adds only what came since.
    stats.record("POST", route, 202, 0.001)
    stats.flush()
    stats.flush()
    assert HTTP_REQUESTS.labels("POST", route, "202")._value.get() == 6


async def test_a_scrape_counts_every_request_answered_before_it(gateway: Client) -> None:
    line = re.compile(
        r'^chatbeto_http_requests_total\{method="GET",route="/healthz",status="200"\} (\S+)$',
        re.M,
    )

    async def healthz_count() -> float:
        text = await (await gateway.get("/metrics")).text()
        found = line.search(text)
        return float(found.group(1)) if found else 0.0

    before = await healthz_count()
    for _ in range(3):
        assert (await gateway.get("/healthz")).status == 200
    # No waiting for the periodic flush: the scrape flushes this process's counts first.
    assert await healthz_count() == before + 3


async def test_requests_are_counted_by_route_template_and_unmatched(gateway: Client) -> None:
    """Labels come from a per-route cache: a dynamic route's template (not its path), and the
    catch-all's requests as `unmatched` (not cached: each path has its own scope)."""

    def count(text: str, route: str, status: int) -> float:
        found = re.search(
            rf'^chatbeto_http_requests_total\{{method="GET",route="{re.escape(route)}",'
            rf'status="{status}"\}} (\S+)$',
            text,
            re.M,
        )
        return float(found.group(1)) if found else 0.0

    before = await (await gateway.get("/metrics")).text()
    for _ in range(2):
        assert (await gateway.get(f"/api/sessions/{uuid.uuid4()}")).status == 401  # no key
        assert (await gateway.get(f"/no/such/{uuid.uuid4().hex}")).status == 404
    after = await (await gateway.get("/metrics")).text()
    template = "/api/sessions/{session_id}"
    assert count(after, template, 401) == count(before, template, 401) + 2
    assert count(after, "unmatched", 404) == count(before, "unmatched", 404) + 2
