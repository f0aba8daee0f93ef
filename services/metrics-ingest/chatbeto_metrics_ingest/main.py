"""`chatbeto run metrics-ingest`."""

from __future__ import annotations

from chatbeto.logging import configure
from chatbeto.service import run_worker
from chatbeto.settings import MetricsIngestSettings, load

from chatbeto_metrics_ingest.consumer import MetricsIngest


def main() -> int:
    settings = load(MetricsIngestSettings)
    configure(settings.log_level, settings.log_format, "metrics-ingest")
    return run_worker(settings, MetricsIngest(settings))
