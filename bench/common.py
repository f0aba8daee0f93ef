"""What every benchmark section shares: the row type, a scratch database and namespace, and
processes started the way an operator would start them."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import aiohttp
import asyncpg
from chatbeto.db import with_database
from chatbeto.migrate import apply_migrations
from chatbeto.topology import Topology

PG_BASE = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
CHATBETO = str(Path(sys.executable).with_name("chatbeto"))


@dataclass(frozen=True)
class Row:
    section: str
    metric: str
    value: str
    target: str = ""


@dataclass(frozen=True)
class Scratch:
    dsn: str
    namespace: str

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
        env.update(
            DATABASE_URL=self.dsn,
            AMQP_URL=AMQP_URL,
            AMQP_NAMESPACE=self.namespace,
            LOG_LEVEL="warning",
            HEALTH_PORT="0",
        )
        env.update(extra)
        return env

    def spawn(self, *args: str, **extra: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([CHATBETO, *args], env=self.env(**extra))


@asynccontextmanager
async def scratch() -> AsyncIterator[Scratch]:
    """A migrated database and a broker namespace of the benchmark's own, removed afterwards."""
    name = f"cbbench_{uuid.uuid4().hex[:10]}"
    dsn = with_database(PG_BASE, name)
    namespace = f"b{uuid.uuid4().hex[:8]}."
    await apply_migrations(dsn)
    try:
        yield Scratch(dsn, namespace)
    finally:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            await Topology(namespace).delete(await connection.channel())
        admin = await asyncpg.connect(with_database(PG_BASE, "postgres"))
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "wrk"],
        check=False,
        capture_output=True,
    )
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("bench needs wrk (apt-get install wrk)")
    return found


def parse_wrk(out: str) -> dict[str, float]:
    def unit(value: str, suffix: str) -> float:
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[suffix]
        return float(value) * scale

    result: dict[str, float] = {}
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    result["rps"] = float(rps.group(1)) if rps else 0.0
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        if m:
            result[f"p{pct}"] = unit(m.group(1), m.group(2))
    total = re.search(r"(\d+) requests in", out)
    result["requests"] = float(total.group(1)) if total else 0.0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non2xx"] = float(non2xx.group(1)) if non2xx else 0.0
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["socket_errors"] = float(sum(int(x) for x in errors.groups())) if errors else 0.0
    return result


def run_wrk(wrk: str, url: str, script: str, seconds: int, connections: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(script)
    out = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", fh.name, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    Path(fh.name).unlink()
    return parse_wrk(out)


async def wait_http(url: str, timeout: float = 30, ok: tuple[int, ...] = (200,)) -> None:
    """Poll `url` until it answers one of the `ok` statuses."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(url) as resp:
                    if resp.status in ok:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not become ready")
