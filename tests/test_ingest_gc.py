"""metrics-ingest's garbage collector: start-up's objects frozen, collections rare (the default
young collections walked every batch's records again and again)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_tune_gc_freezes_start_up_and_raises_the_thresholds() -> None:
    from chatbeto_metrics_ingest.main import GC_THRESHOLDS, tune_gc

    gc.unfreeze()
    tune_gc()
    assert gc.get_threshold() == GC_THRESHOLDS
    assert GC_THRESHOLDS[0] >= 100_000
    assert gc.get_freeze_count() > 0
