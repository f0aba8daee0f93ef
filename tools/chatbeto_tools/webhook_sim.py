"""`chatbeto webhook send`: the webhook simulator — signs a body exactly as the gateway verifies
it (`chatbeto.signatures`) and sends it, so users can test their own setup end to end."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from chatbeto import signatures
from chatbeto.failures import UsageError

SEND_TIMEOUT_SECONDS = 30


def register(subparsers: Any) -> None:
    webhook = subparsers.add_parser("webhook", help="webhook tools").add_subparsers(
        dest="action", required=True
    )
    send = webhook.add_parser(
        "send",
        help="sign a JSON body and POST it to a webhook URL",
        description="Signs with the legacy scheme (X-Webhook-Signature, ms timestamp) or "
        "Standard Webhooks (webhook-id/-timestamp/-signature). A comma-separated --secret "
        "signs with each secret (Standard Webhooks; legacy uses the first).",
    )
    send.add_argument(
        "--url",
        help="webhook URL (default: the gateway's /webhook/chatgpt at GATEWAY_HOST:GATEWAY_PORT)",
    )
    send.add_argument(
        "--secret",
        help="signing secret (default: WEBHOOK_SECRET, or OPENAI_WEBHOOK_SECRET for a "
        "/webhook/openai URL, from the environment or .env)",
    )
    send.add_argument("--event", required=True, help="event type, e.g. conversation.created")
    send.add_argument("--file", required=True, help="JSON body to send ('-' for stdin)")
    send.add_argument(
        "--scheme",
        choices=("legacy", "standard"),
        default=None,
        help="signature scheme (default: legacy; standard for a /webhook/openai URL)",
    )
    send.add_argument("--id", dest="webhook_id", help="webhook-id (standard; default: random)")
    send.set_defaults(func=cmd_send)


def build_headers(
    scheme: str, secrets: list[str], event: str, body: bytes, webhook_id: str | None = None
) -> dict[str, str]:
    if scheme == "legacy":
        headers = signatures.legacy_headers(secrets[0], body, event)
    else:
        headers = signatures.standard_headers(secrets, body, webhook_id=webhook_id)
        headers["X-Event-Type"] = event
    headers["Content-Type"] = "application/json"
    return headers


async def send(url: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=SEND_TIMEOUT_SECONDS)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(url, data=body, headers=headers) as resp,
    ):
        return resp.status, await resp.text()


def _defaults(args: argparse.Namespace) -> tuple[str, str, str]:
    """URL, secret and scheme: the options given, else the settings (environment and .env)."""
    from chatbeto.settings import GatewaySettings, load

    settings = load(GatewaySettings)
    host = "127.0.0.1" if settings.gateway_host in ("0.0.0.0", "::", "") else settings.gateway_host
    url = args.url or f"http://{host}:{settings.gateway_port}/webhook/chatgpt"
    openai = url.rstrip("/").endswith("/webhook/openai")
    configured = settings.openai_webhook_secret if openai else settings.webhook_secret
    secret = args.secret or (configured.get_secret_value() if configured else "")
    scheme = args.scheme or ("standard" if openai else "legacy")
    return url, secret, scheme


def _body(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        raise UsageError(f"webhook send: --file {name}: {exc.strerror or exc}") from None


def cmd_send(args: argparse.Namespace) -> int:
    import aiohttp

    url, secret, scheme = _defaults(args)
    secrets = signatures.parse_secrets(secret)
    if not secrets:
        variable = (
            "OPENAI_WEBHOOK_SECRET" if url.rstrip("/").endswith("/openai") else "WEBHOOK_SECRET"
        )
        raise UsageError(f"webhook send: no secret: pass --secret or set {variable} (or in .env)")
    body = _body(args.file)
    try:
        headers = build_headers(scheme, secrets, args.event, body, args.webhook_id)
    except ValueError as exc:
        raise UsageError(f"webhook send: --secret: {exc}") from None
    try:
        status, text = asyncio.run(send(url, headers, body))
    except (aiohttp.ClientError, TimeoutError) as exc:
        print(
            f"chatbeto: webhook send: cannot reach {url}: {exc or type(exc).__name__}",
            file=sys.stderr,
        )
        return 1
    print(f"{status} {text}")
    return 0 if 200 <= status < 300 else 1
