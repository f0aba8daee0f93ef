"""`chatbeto run gateway`."""

from __future__ import annotations

from chatbeto.logging import configure
from chatbeto.settings import GatewaySettings, load

from chatbeto_gateway.app import run


def main() -> int:
    settings = load(GatewaySettings)
    configure(settings.log_level, settings.log_format, "gateway")
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is optional off Linux
        pass
    run(settings)
    return 0
