"""`chatbeto run openai-worker`."""

from __future__ import annotations

from chatbeto.logging import configure
from chatbeto.settings import OpenAIWorkerSettings, load


def main() -> int:
    settings = load(OpenAIWorkerSettings)
    configure(settings.log_level, settings.log_format, "openai-worker")
    raise SystemExit("openai-worker: not built yet")
