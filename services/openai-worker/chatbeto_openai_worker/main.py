"""`chatbeto run openai-worker`: the model-call worker and the import worker, on one runtime."""

from __future__ import annotations

from chatbeto.logging import configure
from chatbeto.service import Service, run_worker
from chatbeto.settings import OpenAIWorkerSettings, load

from chatbeto_openai_worker.imports import ImportWorker
from chatbeto_openai_worker.worker import OpenAIWorker


def services(settings: OpenAIWorkerSettings) -> list[Service]:
    """What this process runs: one pool, broker link and health port for both."""
    return [OpenAIWorker(settings), ImportWorker(settings)]


def main() -> int:
    settings = load(OpenAIWorkerSettings)
    configure(settings.log_level, settings.log_format, "openai-worker")
    return run_worker(settings, *services(settings))
