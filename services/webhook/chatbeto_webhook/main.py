"""`chatbeto run webhook`."""

from __future__ import annotations

from chatbeto.logging import configure
from chatbeto.service import run_worker
from chatbeto.settings import WebhookSettings, load

from chatbeto_webhook.consumer import WebhookService


def main() -> int:
    settings = load(WebhookSettings)
    configure(settings.log_level, settings.log_format, "webhook")
    return run_worker(settings, WebhookService(settings))
