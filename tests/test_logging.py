"""Library logs (aio-pika, aiormq, asyncio) take the process's format: JSON lines under
LOG_FORMAT=json, the console renderer under console."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

SCRIPT = """
import logging, sys
from chatbeto.logging import configure, get_logger
configure("info", sys.argv[1], "probe")
logging.getLogger("aio_pika.robust_connection").warning("connection lost, reconnecting in %s s", 5)
logging.getLogger("aiormq.connection").info("below the library level: not shown")
try:
    raise ConnectionResetError("peer went away")
except ConnectionResetError:
    logging.getLogger("asyncio").exception("unhandled error in a callback")
get_logger("chatbeto.x").info("our own line", attempt=2)
"""


def run(fmt: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, fmt], capture_output=True, text=True, check=True, timeout=60
    )
    return done.stderr.strip().splitlines()


def test_library_logs_are_json_lines_under_json() -> None:
    lines = [orjson.loads(line) for line in run("json")]  # every line is one JSON object
    assert [line["event"] for line in lines] == [
        "connection lost, reconnecting in 5 s",
        "unhandled error in a callback",
        "our own line",
    ]
    reconnect, error, ours = lines
    assert reconnect["logger"] == "aio_pika.robust_connection"
    assert reconnect["level"] == "warning"
    assert reconnect["service"] == "probe"
    assert "timestamp" in reconnect
    assert error["level"] == "error"
    assert "ConnectionResetError: peer went away" in error["exception"]
    assert ours["attempt"] == 2


@pytest.mark.parametrize("fmt", ["console"])
def test_library_logs_use_the_console_renderer_under_console(fmt: str) -> None:
    lines = run(fmt)
    assert not lines[0].startswith("{")
    assert "connection lost, reconnecting in 5 s" in lines[0]
    assert "aio_pika.robust_connection" in lines[0]
    assert any("ConnectionResetError: peer went away" in line for line in lines)
