"""`chatbeto run gateway`: one process, or `GATEWAY_WORKERS` processes sharing the port."""

from __future__ import annotations

import sys

from chatbeto.logging import configure
from chatbeto.settings import GatewaySettings, load

from chatbeto_gateway.supervisor import PortTaken, reserve_port, supervise


def main() -> int:
    settings = load(GatewaySettings)
    configure(settings.log_level, settings.log_format, "gateway")
    if settings.gateway_workers > 1:
        return supervise(settings)
    if settings.gateway_port != 0:
        try:
            reserve_port(settings.gateway_host, settings.gateway_port)
        except PortTaken as exc:
            print(f"configuration error: GATEWAY_PORT: {exc}", file=sys.stderr)
            return 2
    from chatbeto_gateway.app import run

    run(settings)
    return 0
