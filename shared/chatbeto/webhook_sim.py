"""`chatbeto webhook send`: the webhook simulator — signs a body exactly as the gateway verifies
it (`chatbeto.signatures`) and sends it, so users can test their own setup end to end."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from chatbeto import signatures

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
    send.add_argument("--url", required=True, help="e.g. http://127.0.0.1:8080/webhook/chatgpt")
    send.add_argument(
        "--secret",
        default=os.environ.get("WEBHOOK_SECRET"),
        help="signing secret (default: $WEBHOOK_SECRET)",
    )
    send.add_argument("--event", required=True, help="event type, e.g. conversation.created")
    send.add_argument("--file", required=True, help="JSON body to send ('-' for stdin)")
    send.add_argument("--scheme", choices=("legacy", "standard"), default="legacy")
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


def cmd_send(args: argparse.Namespace) -> int:
    secrets = signatures.parse_secrets(args.secret or "")
    if not secrets:
        print("--secret (or WEBHOOK_SECRET) is required", file=sys.stderr)
        return 2
    body = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    try:
        headers = build_headers(args.scheme, secrets, args.event, body, args.webhook_id)
    except ValueError as exc:
        print(f"--secret: {exc}", file=sys.stderr)
        return 2
    status, text = asyncio.run(send(args.url, headers, body))
    print(f"{status} {text}")
    return 0 if 200 <= status < 300 else 1
