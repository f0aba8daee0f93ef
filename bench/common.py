"""What every benchmark section shares: the row type, a scratch database and namespace, and
processes started the way an operator would start them."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aio_pika
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
