"""The signing module against the reference implementations, both directions."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import openai
import pytest
from chatbeto import signatures
from chatbeto.signatures import SignatureError
from standardwebhooks import Webhook

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
OTHER = "whsec_" + base64.b64encode(b"another-secret-another-secret!!!").decode()
BODY = b'{"type":"conversation.created","data":{"projectId":1,"title":"caf\xc3\xa9"}}'


def reference_headers(
    secret: str, body: bytes, msg_id: str = "msg_1", ts: int | None = None
) -> dict[str, str]:
    ts = int(time.time()) if ts is None else ts
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, UTC), body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": signature}


def test_reference_library_signature_verifies() -> None:
    verified = signatures.verify_standard([SECRET], reference_headers(SECRET, BODY), BODY)
    assert verified.key == "std:msg_1"
    assert verified.webhook_id == "msg_1"


def test_what_chatbeto_signs_verifies_with_reference_library_and_openai_sdk() -> None:
    headers = signatures.standard_headers([SECRET], BODY, webhook_id="msg_2")
    Webhook(SECRET).verify(BODY, headers)  # raises if not
    client = openai.OpenAI(api_key="unused", webhook_secret=SECRET)
    client.webhooks.verify_signature(BODY, headers)  # raises if not
    client.close()


def test_plain_secret_signs_as_openai_sdk_verifies() -> None:
    headers = signatures.standard_headers(["plain-secret"], BODY)
    client = openai.OpenAI(api_key="unused")
    client.webhooks.verify_signature(BODY, headers, secret="plain-secret")
    client.close()
    signatures.verify_standard(["plain-secret"], headers, BODY)


def test_tampered_body_is_invalid() -> None:
    headers = reference_headers(SECRET, BODY)
    with pytest.raises(SignatureError, match="invalid signature"):
        signatures.verify_standard([SECRET], headers, BODY.replace(b"1", b"2"))


def test_wrong_secret_is_invalid() -> None:
    with pytest.raises(SignatureError, match="invalid signature"):
        signatures.verify_standard([OTHER], reference_headers(SECRET, BODY), BODY)


@pytest.mark.parametrize("offset", [-301, 301, -10_000, 10_000])
def test_stale_and_future_timestamps(offset: int) -> None:
    headers = reference_headers(SECRET, BODY, ts=int(time.time()) + offset)
    with pytest.raises(SignatureError, match="stale"):
        signatures.verify_standard([SECRET], headers, BODY)


@pytest.mark.parametrize("offset", [-290, 290])
def test_within_window_is_accepted(offset: int) -> None:
    headers = reference_headers(SECRET, BODY, ts=int(time.time()) + offset)
    signatures.verify_standard([SECRET], headers, BODY)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_standard_header(missing: str) -> None:
    headers = reference_headers(SECRET, BODY)
    del headers[missing]
    with pytest.raises(SignatureError, match="invalid signature"):
        signatures.verify_standard([SECRET], headers, BODY)


@pytest.mark.parametrize(
    "bad",
    ["", "v1", "v1,", "v1,not-base64!!", "v2,AAAA", "sha256=00", "v1," + "A" * 5000],
)
def test_malformed_signature_is_invalid(bad: str) -> None:
    headers = {**reference_headers(SECRET, BODY), "webhook-signature": bad}
    with pytest.raises(SignatureError, match="invalid signature"):
        signatures.verify_standard([SECRET], headers, BODY)


@pytest.mark.parametrize("ts", ["abc", "-5", "1.5", "9" * 40])
def test_malformed_timestamp_is_invalid(ts: str) -> None:
    headers = {**reference_headers(SECRET, BODY), "webhook-timestamp": ts}
    with pytest.raises(SignatureError, match="invalid signature"):
        signatures.verify_standard([SECRET], headers, BODY)


def test_rotation_either_secret_and_multiple_signatures() -> None:
    # Configured: old and new; the sender signs with either one, or with both (space-separated).
    configured = signatures.parse_secrets(f" {SECRET} , {OTHER} ")
    assert configured == [SECRET, OTHER]
    signatures.verify_standard(configured, reference_headers(SECRET, BODY), BODY)
    signatures.verify_standard(configured, reference_headers(OTHER, BODY), BODY)
    both = signatures.standard_headers([OTHER, SECRET], BODY)
    assert len(both["webhook-signature"].split()) == 2
    signatures.verify_standard([SECRET], both, BODY)
    Webhook(SECRET).verify(BODY, both)


def test_legacy_sign_and_verify() -> None:
    headers = signatures.legacy_headers("s3cret", BODY, "conversation.created")
    ts = int(headers["X-Webhook-Timestamp"])
    assert abs(ts - time.time() * 1000) < 5_000  # milliseconds, as Date.now()
    import hashlib
    import hmac

    expected = hmac.new(b"s3cret", f"{ts}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert headers["X-Webhook-Signature"] == f"sha256={expected}"
    verified = signatures.verify_legacy(["old", "s3cret"], headers, BODY)
    assert verified.key == f"legacy:{ts}:sha256={expected}"


def test_legacy_failures() -> None:
    headers = signatures.legacy_headers("s3cret", BODY, "x")
    with pytest.raises(SignatureError, match="invalid signature"):
        signatures.verify_legacy(["other"], headers, BODY)
    with pytest.raises(SignatureError, match="invalid signature"):
        signatures.verify_legacy(["s3cret"], headers, BODY + b" ")
    stale = signatures.legacy_headers(
        "s3cret", BODY, "x", timestamp_ms=int(time.time() * 1000) - 301_000
    )
    with pytest.raises(SignatureError, match="stale"):
        signatures.verify_legacy(["s3cret"], stale, BODY)
    future = signatures.legacy_headers(
        "s3cret", BODY, "x", timestamp_ms=int(time.time() * 1000) + 301_000
    )
    with pytest.raises(SignatureError, match="stale"):
        signatures.verify_legacy(["s3cret"], future, BODY)
    for missing in ("X-Webhook-Timestamp", "X-Webhook-Signature"):
        partial = {k: v for k, v in headers.items() if k != missing}
        with pytest.raises(SignatureError, match="invalid signature"):
            signatures.verify_legacy(["s3cret"], partial, BODY)


def test_bad_whsec_secret_is_refused_when_signing() -> None:
    with pytest.raises(ValueError, match="base64"):
        signatures.standard_headers(["whsec_!!!"], BODY)
