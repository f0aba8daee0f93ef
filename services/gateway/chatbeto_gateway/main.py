"""`chatbeto run gateway`: one process, or `GATEWAY_WORKERS` processes sharing the port."""

from __future__ import annotations

from chatbeto.logging import configure
from chatbeto.settings import GatewaySettings, load

from chatbeto_gateway.app import run
from chatbeto_gateway.supervisor import supervise


def main() -> int:
    settings = load(GatewaySettings)
    configure(settings.log_level, settings.log_format, "gateway")
    if settings.gateway_workers > 1:
        return supervise(settings)
    run(settings)
    return 0
