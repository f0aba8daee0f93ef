"""`chatbeto run metrics-ingest`."""

from __future__ import annotations

import gc

from chatbeto.logging import configure
from chatbeto.service import run_worker
from chatbeto.settings import MetricsIngestSettings, load

from chatbeto_metrics_ingest.consumer import MetricsIngest

# The decoded records of a batch live until its transaction commits, so the default young
# collections (every 700 allocations) walked them again and again and moved them into the old
# generations, whose full collections walked them once more: 36 % of the worker's CPU under
# py-spy. The records hold no reference cycles (reference counting frees them); what does make
# cycles (tracebacks, asyncio) is still collected, every 100,000 allocations.
GC_THRESHOLDS = (100_000, 50, 100)


def tune_gc() -> None:
    """Leave what start-up made (modules, schemas) out of every collection, and collect rarely."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def main() -> int:
    settings = load(MetricsIngestSettings)
    configure(settings.log_level, settings.log_format, "metrics-ingest")
    tune_gc()
    return run_worker(settings, MetricsIngest(settings))
