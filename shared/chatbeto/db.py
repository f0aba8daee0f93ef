"""Postgres: the pool every service opens, and the database URL helpers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeAlias, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from chatbeto.logging import get_logger

log = get_logger(__name__)
T = TypeVar("T")
# A Postgres that is starting (or restarting) refuses for a few seconds: wait that long, no more,
# then the caller's one-line error names DATABASE_URL.
CONNECT_ATTEMPTS = 5
CONNECT_RETRY_SECONDS = 1.0
# asyncpg waits 60 s for a new connection and has no statement timeout of its own: against a
# Postgres that drops packets (no refusal to see) every caller would wait that long. Bounded
# here so that a caller still answers 503 before its own caller gives up.
CONNECT_TIMEOUT_SECONDS = 5.0
COMMAND_TIMEOUT_SECONDS = 30.0
# Reports over long periods (stats, costs) read many rows: they may take this long even where a
# pool bounds its other statements more tightly (the gateway's, see its app).
REPORT_TIMEOUT_SECONDS = 30.0
TRANSIENT = (OSError, TimeoutError, asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError)
# Postgres unreachable, as every service tells its caller (contract 3.1: 503 with Retry-After):
# the gateway for its own queries, the openai-worker in its error reply. How long to wait: a
# restart takes a few seconds.
DATABASE_UNAVAILABLE = "database_unavailable"
DATABASE_UNAVAILABLE_MESSAGE = "the database is unavailable; retry later"
DATABASE_RETRY_AFTER_SECONDS = 5
# Postgres refusing or dropping connections, not a bad query: the server's 08xxx and 57Pxx
# classes (connection failures, shutting down, starting up) and "too many connections".
DATABASE_OUTAGES = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.TooManyConnectionsError,
)


def mask_dsn(dsn: str) -> str:
    """The DSN with its password hidden, for logs."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def database_name(dsn: str) -> str:
    return urlsplit(dsn).path.lstrip("/") or "postgres"


def with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


def is_database_outage(exc: BaseException) -> bool:
    """True for a failure to reach or keep talking to Postgres, wherever it was met.

    asyncpg raises its own classes for what the server says, but a refused, reset or timed-out
    socket (or a pool that could not hand out a connection in time) arrives as a plain
    OSError / TimeoutError (or InterfaceError on a closed connection); those count when asyncpg
    raised them (a frame of asyncpg in their traceback), so a client that hangs up, or a broker
    that drops its link, is not mistaken for the database.
    """
    if isinstance(exc, DATABASE_OUTAGES):
        return True
    if not isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError):
        return False
    tb = exc.__traceback__
    while tb is not None:
        if str(tb.tb_frame.f_globals.get("__name__", "")).startswith("asyncpg"):
            return True
        tb = tb.tb_next
    return False


# What repo functions take: a plain connection or one borrowed from a pool.
Conn: TypeAlias = "asyncpg.Connection | PoolConnectionProxy[Any]"


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename,
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


def _initialiser(
    session_sql: Sequence[str],
) -> Callable[[asyncpg.Connection], Coroutine[Any, Any, None]]:
    async def init(conn: asyncpg.Connection) -> None:
        await _init_connection(conn)
        for sql in session_sql:
            await conn.execute(sql)

    return init


async def _retrying(dsn: str, open_: Callable[[], Awaitable[T]]) -> T:
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        try:
            return await open_()
        except TRANSIENT as exc:
            if attempt == CONNECT_ATTEMPTS:
                raise
            log.warning(
                "postgres not reachable, retrying",
                dsn=mask_dsn(dsn),
                attempt=attempt,
                error=type(exc).__name__,
            )
            await asyncio.sleep(CONNECT_RETRY_SECONDS)
    raise AssertionError("unreachable")


async def connect(dsn: str) -> asyncpg.Connection:
    """One plain connection (no codecs), after a bounded retry while Postgres refuses."""
    conn: asyncpg.Connection = await _retrying(dsn, lambda: asyncpg.connect(dsn))
    return conn


async def _keep_session(conn: asyncpg.Connection) -> None:
    """No reset on release (asyncpg still rolls back a transaction left open)."""


async def create_pool(
    dsn: str,
    min_size: int = 1,
    max_size: int = 10,
    server_settings: dict[str, str] | None = None,
    *,
    reset_session: bool = True,
    session_sql: Sequence[str] = (),
    command_timeout: float = COMMAND_TIMEOUT_SECONDS,
) -> asyncpg.Pool:
    """`server_settings` are session settings at connect time (they survive the pool's
    `RESET ALL` between borrowers). `reset_session=False` skips that reset (advisory locks,
    LISTEN, cursors, SETs) and its round trip on every release: only for a pool whose users
    leave no session state behind. `session_sql` runs on each new connection (a session's
    temporary tables, say). `command_timeout` bounds each statement (asyncpg raises
    TimeoutError, an outage to `is_database_outage`)."""
    pool = await _retrying(
        dsn,
        lambda: asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            init=_initialiser(session_sql),
            timeout=CONNECT_TIMEOUT_SECONDS,
            command_timeout=command_timeout,
            server_settings=server_settings,
            reset=None if reset_session else _keep_session,
        ),
    )
    assert pool is not None
    return pool
