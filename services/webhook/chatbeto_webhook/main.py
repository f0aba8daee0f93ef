"""`chatbeto run webhook`."""

from __future__ import annotations

from chatbeto.logging import configure
from chatbeto.settings import WebhookSettings, load


def main() -> int:
    settings = load(WebhookSettings)
    configure(settings.log_level, settings.log_format, "webhook")
    raise SystemExit("webhook: not built yet")
