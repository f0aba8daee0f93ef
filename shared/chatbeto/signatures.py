"""Webhook signatures: one module that both signs (the simulator) and verifies (the gateway).

Two schemes (contract 3.3):

- legacy: `X-Webhook-Timestamp` in milliseconds, `X-Webhook-Signature: sha256=<hex>` where the
  hex is HMAC-SHA256 of `"<timestamp>.<raw body>"` keyed by the secret string as given (as the
  source document's Node senders do with `createHmac("sha256", secret)`);
- Standard Webhooks: `webhook-id`, `webhook-timestamp` in seconds, `webhook-signature` a
  space-separated list of `v1,<base64>` over `"<id>.<timestamp>.<raw body>"`; a `whsec_` secret
  is base64 after its prefix, any other secret is used as its UTF-8 bytes (as OpenAI's SDK does).

Everything works on the raw body bytes, compares in constant time, accepts ±300 s of clock
skew, and takes a list of secrets so that old and new stay valid during a rotation. A failure
says only "invalid signature" or "stale" — never which part was wrong.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

MAX_SKEW_SECONDS = 300
# Header values longer than this are refused before any HMAC work.
MAX_HEADER_CHARS = 4096
MAX_SIGNATURES = 8
MAX_WEBHOOK_ID_CHARS = 256
_DIGITS = re.compile(r"^[0-9]{1,16}$")

LEGACY_TIMESTAMP = "X-Webhook-Timestamp"
LEGACY_SIGNATURE = "X-Webhook-Signature"
STANDARD_ID = "webhook-id"
STANDARD_TIMESTAMP = "webhook-timestamp"
STANDARD_SIGNATURE = "webhook-signature"


class SignatureError(Exception):
    """Verification failed; `reason` is all the sender may learn."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


INVALID = "invalid signature"
STALE = "stale"


@dataclass(frozen=True)
class Verified:
    """A verified delivery: `key` names it for deduplication across redeliveries."""

    scheme: str  # "legacy" | "standard"
    key: str
    webhook_id: str | None
    timestamp_seconds: int


def parse_secrets(value: str) -> list[str]:
    """`a,b` → [a, b]: every listed secret is valid (rotation)."""
    return [part.strip() for part in value.split(",") if part.strip()]


def standard_key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        encoded = secret[len("whsec_") :]
        try:
            # Tolerate unpadded base64, as the reference library does.
            return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except binascii.Error as exc:
            raise ValueError("a whsec_ secret must be base64 after its prefix") from exc
    return secret.encode()


def sign_standard(secret: str, webhook_id: str, timestamp_seconds: int | str, body: bytes) -> str:
    signed = f"{webhook_id}.{timestamp_seconds}.".encode() + body
    digest = hmac.new(standard_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def sign_legacy(secret: str, timestamp_ms: int | str, body: bytes) -> str:
    signed = f"{timestamp_ms}.".encode() + body
    return "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def standard_headers(
    secrets: Sequence[str],
    body: bytes,
    *,
    webhook_id: str | None = None,
    timestamp_seconds: int | None = None,
) -> dict[str, str]:
    """Headers of a Standard Webhooks delivery, one signature per secret."""
    webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
    ts = int(time.time()) if timestamp_seconds is None else timestamp_seconds
    return {
        STANDARD_ID: webhook_id,
        STANDARD_TIMESTAMP: str(ts),
        STANDARD_SIGNATURE: " ".join(sign_standard(s, webhook_id, ts, body) for s in secrets),
    }


def legacy_headers(
    secret: str, body: bytes, event_type: str, *, timestamp_ms: int | None = None
) -> dict[str, str]:
    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    return {
        "X-Event-Type": event_type,
        LEGACY_TIMESTAMP: str(ts),
        LEGACY_SIGNATURE: sign_legacy(secret, ts, body),
    }


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None or not value.strip() or len(value) > MAX_HEADER_CHARS:
        raise SignatureError(INVALID)
    return value.strip()


def _timestamp(text: str, now_seconds: float, divisor: int) -> int:
    if not _DIGITS.match(text):
        raise SignatureError(INVALID)
    seconds = int(text) // divisor
    if abs(now_seconds - seconds) > MAX_SKEW_SECONDS:
        raise SignatureError(STALE)
    return seconds


def is_standard(headers: Mapping[str, str]) -> bool:
    return STANDARD_SIGNATURE in headers and LEGACY_SIGNATURE not in headers


def verify_standard(
    secrets: Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now_seconds: float | None = None,
) -> Verified:
    """Check a Standard Webhooks delivery (headers looked up case-insensitively by the caller)."""
    webhook_id = _header(headers, STANDARD_ID)
    if len(webhook_id) > MAX_WEBHOOK_ID_CHARS:
        raise SignatureError(INVALID)
    ts_text = _header(headers, STANDARD_TIMESTAMP)
    presented = _header(headers, STANDARD_SIGNATURE).split()
    ts = _timestamp(ts_text, time.time() if now_seconds is None else now_seconds, 1)
    candidates: list[bytes] = []
    for item in presented[:MAX_SIGNATURES]:
        version, _, value = item.partition(",")
        if version != "v1":
            continue  # other versions may appear; only v1 is defined
        try:
            candidates.append(base64.b64decode(value, validate=True))
        except binascii.Error:
            continue
    expected = [
        base64.b64decode(sign_standard(s, webhook_id, ts_text, body)[3:])
        for s in secrets
        if _usable(s)
    ]
    # Compare every pair, so timing does not reveal which secret or signature matched.
    matched = False
    for want in expected:
        for got in candidates:
            matched |= hmac.compare_digest(want, got)
    if not matched:
        raise SignatureError(INVALID)
    return Verified("standard", f"std:{webhook_id}", webhook_id, ts)


def verify_legacy(
    secrets: Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now_seconds: float | None = None,
) -> Verified:
    ts_text = _header(headers, LEGACY_TIMESTAMP)
    presented = _header(headers, LEGACY_SIGNATURE)
    seconds = _timestamp(ts_text, time.time() if now_seconds is None else now_seconds, 1000)
    matched = False
    for secret in secrets:
        want = sign_legacy(secret, ts_text, body)
        matched |= hmac.compare_digest(want.encode(), presented.lower().encode())
    if not matched:
        raise SignatureError(INVALID)
    # The legacy scheme has no delivery id: a resend repeats timestamp and signature.
    return Verified("legacy", f"legacy:{ts_text}:{presented.lower()}", None, seconds)


def _usable(secret: str) -> bool:
    try:
        return bool(standard_key(secret))
    except ValueError:
        return False
