"""`chatbeto run openai-worker`."""

from __future__ import annotations

from chatbeto.logging import configure
from chatbeto.service import Worker, run_worker
from chatbeto.settings import OpenAIWorkerSettings, load

from chatbeto_openai_worker.imports import ImportWorker
from chatbeto_openai_worker.worker import OpenAIWorker


def companions(settings: OpenAIWorkerSettings) -> list[Worker]:
    """Workers that run inside the openai-worker process next to it (start/close with it).

    The import worker (`chatbeto_openai_worker.imports.ImportWorker`) belongs here.
    """
    return [ImportWorker(settings)]


def main() -> int:
    settings = load(OpenAIWorkerSettings)
    configure(settings.log_level, settings.log_format, "openai-worker")
    worker = OpenAIWorker(settings, companions(settings))
    return run_worker(worker, settings.health_host, settings.health_port)
