"""`/healthz`, `/readyz` and `/metrics`: the gateway mounts these, each worker serves them on
its own port (`<SERVICE>_HEALTH_PORT`, else `HEALTH_PORT`; 0 picks a free one)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg
from aio_pika.abc import AbstractRobustConnection
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

Check = Callable[[], Awaitable[bool]]
CHECK_TIMEOUT_SECONDS = 2.0


def postgres_check(pool: Callable[[], asyncpg.Pool | None]) -> Check:
    async def check() -> bool:
        current = pool()
        if current is None:
            return False
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
                return bool(await current.fetchval("SELECT 1") == 1)
        except Exception:
            return False

    return check


def broker_check(connection: Callable[[], AbstractRobustConnection | None]) -> Check:
    async def check() -> bool:
        current = connection()
        return current is not None and not current.is_closed and current.connected.is_set()

    return check


async def readiness(checks: dict[str, Check]) -> tuple[bool, dict[str, str]]:
    results = await asyncio.gather(*(check() for check in checks.values()))
    status = {name: "ok" if ok else "unavailable" for name, ok in zip(checks, results, strict=True)}
    return all(results), status


def add_routes(app: web.Application, checks: dict[str, Check]) -> None:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        ok, status = await readiness(checks)
        if ok:
            return web.json_response({"status": "ready", "checks": status})
        failing = [name for name, value in status.items() if value != "ok"]
        return web.json_response(
            {"status": "unavailable", "checks": status, "failing": failing}, status=503
        )

    async def metrics(_: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest())
        resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return resp

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


async def serve(host: str, port: int, checks: dict[str, Check]) -> web.AppRunner:
    app = web.Application()
    add_routes(app, checks)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port actually listened on (differs from the one asked for when that was 0)."""
    address = runner.addresses[0]
    return int(address[1])
