"""Expected failures as one line naming what to fix (contract section 2, issue 13).

The process entry (`chatbeto_tools.cli.main`, which also starts every service) catches what
escapes a command and asks `explain` for its line; only an exception nobody expected keeps its traceback.
Kinds are recognised by type (asyncpg and aiormq errors carry their origin) and, for a bare
`OSError`, by the library that raised it (its traceback's modules), so no service needs its own
handler.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import aiormq.exceptions
import asyncpg

from chatbeto.db import database_name, mask_dsn

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/chatbeto"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
# The port variable of each service, for "port taken" lines that reach the entry.
PORT_VARIABLES = {
    "gateway": "GATEWAY_PORT",
    "openai-worker": "OPENAI_WORKER_HEALTH_PORT",
    "metrics-ingest": "METRICS_INGEST_HEALTH_PORT",
    "webhook": "WEBHOOK_HEALTH_PORT",
}


class UsageError(Exception):
    """Bad input to a command: its message is the whole line."""


def setting(name: str, default: str) -> str:
    """The value in effect (environment, then `.env`), for naming it in the line."""
    if name in os.environ:
        return os.environ[name]
    try:
        from dotenv import dotenv_values

        value = dotenv_values(".env").get(name)
    except Exception:  # an unreadable .env must not hide the real failure
        value = None
    return value or default


def _database() -> str:
    return setting("DATABASE_URL", DEFAULT_DATABASE_URL)


def _broker() -> str:
    return setting("AMQP_URL", DEFAULT_AMQP_URL)


def _where(url: str, default_port: int) -> str:
    parts = urlsplit(url)
    try:
        port = parts.port or default_port
    except ValueError:
        port = default_port
    return f"{parts.hostname or '127.0.0.1'}:{port}"


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exception, its causes, and the members of exception groups (TaskGroup failures)."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, BaseExceptionGroup):
            stack.extend(reversed(current.exceptions))
            continue
        yield current
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                stack.append(linked)


def _raised_by(exc: BaseException, *packages: str) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        if module.split(".")[0] in packages:
            return True
        tb = tb.tb_next
    return False


def reason(exc: BaseException) -> str:
    """Why a connection failed, in a few words (the first line of what was raised)."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _postgres(exc: BaseException) -> str | None:
    url = _database()
    shown = f"DATABASE_URL={mask_dsn(url)}"
    name = database_name(url)
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return f"database {name!r} does not exist ({shown}): run `chatbeto migrate` to create it"
    if isinstance(exc, asyncpg.UndefinedTableError):
        return f"database {name!r} is not set up ({shown}): run `chatbeto migrate`"
    if isinstance(
        exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
    ):
        return f"Postgres refused the credentials in DATABASE_URL ({mask_dsn(url)}): {exc}"
    if isinstance(exc, asyncpg.CannotConnectNowError | asyncpg.TooManyConnectionsError):
        return f"Postgres at {_where(url, 5432)} does not accept connections now ({shown}): {exc}"
    if isinstance(exc, OSError | TimeoutError) and _raised_by(exc, "asyncpg"):
        return f"cannot reach Postgres at {_where(url, 5432)} ({shown}): {reason(exc)}"
    return None


def _rabbitmq(exc: BaseException) -> str | None:
    if not isinstance(exc, aiormq.exceptions.AMQPError):
        return None
    url = _broker()
    shown = f"AMQP_URL={mask_dsn(url)}"
    vhost = urlsplit(url).path[1:] or "/"
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError):
        return f"RabbitMQ at {_where(url, 5672)} refused the credentials in AMQP_URL ({shown})"
    text = str(exc)
    if isinstance(exc, aiormq.exceptions.InvalidFrameError) or "NOT_ALLOWED" in text:
        # The broker closes the handshake when the vhost is missing or not the user's.
        return (
            f"RabbitMQ at {_where(url, 5672)} refused vhost {vhost!r} ({shown}): "
            "create it (rabbitmqctl add_vhost) and give the user access, or fix AMQP_URL"
        )
    if isinstance(exc, aiormq.exceptions.AMQPConnectionError):
        cause = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], str) else text
        return f"cannot reach RabbitMQ at {_where(url, 5672)} ({shown}): {cause.lower()}"
    return f"RabbitMQ error ({shown}): {text or type(exc).__name__}"


def _port(exc: BaseException, service: str | None) -> str | None:
    if not (isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE):
        return None
    variable = PORT_VARIABLES.get(service or "", "the port setting")
    return f"port taken: {exc.strerror or exc} (set {variable} to a free port, or 0)"


def _file(exc: BaseException) -> str | None:
    if isinstance(exc, OSError) and exc.filename is not None and not _raised_by(exc, "asyncpg"):
        return f"{exc.filename}: {exc.strerror or exc}"
    return None


def explain(exc: BaseException, service: str | None = None) -> str | None:
    """The one line for an expected failure, or None for one that deserves its traceback."""
    for leaf in _leaves(exc):
        if isinstance(leaf, UsageError):
            return str(leaf)
        for kind in (_postgres, _rabbitmq, _file):
            line = kind(leaf)
            if line is not None:
                return line
        line = _port(leaf, service)
        if line is not None:
            return line
    return None
