"""deploy/grafana/chatbeto.json: valid JSON whose queries name metrics the services export."""

from __future__ import annotations

import json
import re
from pathlib import Path

from chatbeto import observability  # noqa: F401  (registers the metrics)
from prometheus_client import REGISTRY

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "chatbeto.json"


def exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def test_grafana_queries_use_exported_metrics() -> None:
    exported = {m.name for m in REGISTRY.collect()}
    used = {name for e in exprs() for name in re.findall(r"\bchatbeto_[a-z_]+", e)}
    assert used
    for name in used:
        base = re.sub(r"_(total|bucket|sum|count)$", "", name)
        assert base in exported, name


def test_grafana_covers_what_operators_need() -> None:
    text = "\n".join(exprs())
    for needed in (
        "chatbeto_http_requests_total",  # request rates
        "chatbeto_http_request_duration_seconds_bucket",  # latency
        "rabbitmq_detailed_queue_messages_ready",  # queue depth (RabbitMQ's own exporter)
        'outcome="dead_lettered"',  # dead-lettered messages
        "clamp_min(",  # consumer lag: backlog over consume rate
    ):
        assert needed in text, needed
    for expr in exprs():
        assert expr.count("(") == expr.count(")"), expr
