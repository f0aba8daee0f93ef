"""Self-verifying session ids.

The gateway answers `POST /api/sessions` as soon as the session is on the broker, so an event
may name a session that no worker has stored yet — on this gateway or another replica. Rather
than ask Postgres (which may not know yet), the id itself proves where it came from: a UUIDv8
whose bits are a millisecond timestamp, the GPT's key, a random part and a MAC over them, keyed by
a secret that `chatbeto migrate` stores once for all services.

    48 bits unix ms | 4 version(8) | 12 bits gpt_pk hi | 2 variant | 20 bits gpt_pk lo
    | 18 bits random | 24 bits MAC

A verified id tells the gateway which GPT (hence which project) the session belongs to, with no
I/O, so events are checked in memory and the ordering promise holds across replicas.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid

MAX_GPT_PK = (1 << 32) - 1
_MAC_BITS = 24
_RAND_BITS = 18


def _mac(key: bytes, ts_ms: int, gpt_pk: int, rand: int) -> int:
    msg = ts_ms.to_bytes(6, "big") + gpt_pk.to_bytes(4, "big") + rand.to_bytes(3, "big")
    digest = hmac.new(key, msg, hashlib.sha256).digest()
    return int.from_bytes(digest[:3], "big") & ((1 << _MAC_BITS) - 1)


def issue(key: bytes, gpt_pk: int, now_ms: int | None = None) -> uuid.UUID:
    if not 0 < gpt_pk <= MAX_GPT_PK:
        raise ValueError("gpt_pk out of range")
    ts_ms = (now_ms if now_ms is not None else time.time_ns() // 1_000_000) & ((1 << 48) - 1)
    rand = secrets.randbits(_RAND_BITS)
    mac = _mac(key, ts_ms, gpt_pk, rand)
    hi12, lo20 = gpt_pk >> 20, gpt_pk & 0xFFFFF
    value = (
        (ts_ms << 80)
        | (0x8 << 76)
        | (hi12 << 64)
        | (0b10 << 62)
        | (lo20 << 42)
        | (rand << _MAC_BITS)
        | mac
    )
    return uuid.UUID(int=value)


def verify(key: bytes, session_id: uuid.UUID) -> int | None:
    """The GPT key the id was issued for, or None if the id is not one of ours."""
    value = session_id.int
    if (value >> 76) & 0xF != 0x8 or (value >> 62) & 0b11 != 0b10:
        return None
    ts_ms = value >> 80
    gpt_pk = (((value >> 64) & 0xFFF) << 20) | ((value >> 42) & 0xFFFFF)
    rand = (value >> _MAC_BITS) & ((1 << _RAND_BITS) - 1)
    mac = value & ((1 << _MAC_BITS) - 1)
    if gpt_pk == 0 or not hmac.compare_digest(
        _mac(key, ts_ms, gpt_pk, rand).to_bytes(3, "big"), mac.to_bytes(3, "big")
    ):
        return None
    return gpt_pk


async def load_key(conn: object) -> bytes:
    """Read the shared key (written by `chatbeto migrate`)."""
    value = await conn.fetchval(  # type: ignore[attr-defined]
        "SELECT value FROM app_secrets WHERE name = 'session_id_key'"
    )
    if value is None:
        raise RuntimeError("session id key missing: run `chatbeto migrate` first")
    return bytes(value)
