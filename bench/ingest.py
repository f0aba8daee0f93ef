"""Ingestion benchmark: single events, batches, and the rate at which they are durably stored.

The gateway and metrics-ingest run as processes (`chatbeto run ...`), as an operator runs them,
against a scratch database and broker namespace; `wrk` is the load generator.

Single events are measured beside the bare-HTTP limit (`bench/bare_limit.py`: an aiohttp +
pydantic handler of the same shape that answers 202 without a broker) in the same run, and with
one gateway process beside two (`GATEWAY_WORKERS=2`). CPU per request comes from the
processes' own counters (/proc), which a busy machine disturbs far less than req/s.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aio_pika
import aiohttp
import asyncpg
import orjson
from chatbeto import api_keys
from chatbeto.topology import METRICS_INGEST, Topology

from bench.common import (
    AMQP_URL,
    Row,
    Scratch,
    ensure_wrk,
    free_port,
    run_wrk,
    scratch,
    wait_http,
)

SECTION = "ingest"
CONNECTIONS = 64
WARMUP_SECONDS = 2
LIMIT_RATIO_TARGET = 0.6


# wrk sends prepared bodies in turn (the same ones the paced phase sends): no Lua work per
# request beyond picking one, and one definition of the benchmark's events.
LUA = """
local bodies = {%(bodies)s}
local n = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = "%(key)s"
request = function()
  n = n + 1
  return wrk.format(nil, "%(path)s", nil, bodies[(n %% #bodies) + 1])
end
"""


def event_bodies(
    sessions: list[str], batch: int, count: int, timestamp: str | None = None
) -> list[bytes]:
    """`count` request bodies: one event each (`batch` 0, for POST /api/events), or `batch`
    events each (POST /api/events/batch); the events name the sessions in turn, and carry
    `timestamp` if given (else the gateway stamps them)."""

    def event(i: int) -> dict[str, object]:
        fields: dict[str, object] = {
            "sesion_id": sessions[i % len(sessions)],
            "tipo": "query",
            "contenido": f"bench event {i}",
            "latency_ms": i % 500,
            "tokens_entrada": 12,
            "tokens_salida": 34,
        }
        if timestamp is not None:
            fields["timestamp"] = timestamp
        return fields

    if not batch:
        return [orjson.dumps(event(i)) for i in range(count)]
    return [
        orjson.dumps({"events": [event(i * batch + j) for j in range(batch)]}) for i in range(count)
    ]


def wrk_script(sessions: list[str], key: str, batch: int = 0) -> str:
    """The wrk script of single events (`batch` 0) or of batches of `batch` events."""
    bodies = event_bodies(sessions, batch, 1024 if not batch else 64)
    return LUA % {
        # Lua long strings: JSON holds no "]=]".
        "bodies": ",".join(f"[=[{b.decode()}]=]" for b in bodies),
        "key": key,
        "path": "/api/events/batch" if batch else "/api/events",
    }


async def drain_time(conn: asyncpg.Connection, expected: int, timeout: float = 120) -> float:
    """Seconds until `expected` events are in Postgres, polled."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if await conn.fetchval("SELECT count(*) FROM events") >= expected:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    return float("nan")


async def setup(env: Scratch, base: str, conn: asyncpg.Connection) -> tuple[str, list[str]]:
    project = await conn.fetchval("INSERT INTO projects (name) VALUES ('bench') RETURNING id")
    key, _ = await api_keys.create(
        conn, is_admin=False, project_id=project, rate_limit="100000000/1m"
    )
    await conn.execute(
        "INSERT INTO gpts (gpt_id, name, project_id) VALUES ('bench-gpt', 'B', $1)", project
    )
    sessions = []
    async with aiohttp.ClientSession(headers={"X-API-Key": key}) as http:
        for i in range(64):
            async with http.post(
                f"{base}/api/sessions", json={"gpt_id": "bench-gpt", "usuario_id": f"user{i}"}
            ) as resp:
                sessions.append((await resp.json())["id"])
    return key, sessions


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its descendants (a supervisor's workers)."""
    total = 0.0
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue  # exited meanwhile
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        stack += [int(c) for c in children]
    return total


def listening_sockets(port: int) -> int:
    out = subprocess.run(
        ["ss", "-Hltn", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return len(out.splitlines())


async def wait_listening(port: int, count: int, timeout: float = 60) -> None:
    """Until `count` processes listen on `port` (wrk's connections are made once, at start: a
    worker that starts listening later would get none of them)."""
    deadline = time.monotonic() + timeout
    while listening_sockets(port) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} processes are not listening on {port}")
        await asyncio.sleep(0.2)


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} / {five:.1f} (1 / 5 min), {os.cpu_count()} cores"


def measure(
    wrk: str, base: str, script: str, seconds: int, pids: list[int]
) -> tuple[dict[str, float], list[float]]:
    """wrk after a warm-up; also CPU microseconds per request of each of `pids`."""
    run_wrk(wrk, base, script, WARMUP_SECONDS, CONNECTIONS)
    before = [cpu_seconds(p) for p in pids]
    result = run_wrk(wrk, base, script, seconds, CONNECTIONS)
    after = [cpu_seconds(p) for p in pids]
    requests = max(result["requests"], 1)
    return result, [(b - a) / requests * 1e6 for a, b in zip(before, after, strict=True)]


async def bare_limit(
    wrk: str, script: str, seconds: int, workers: int = 1
) -> tuple[dict[str, float], float]:
    """The limit's req/s and CPU per request, with as many processes as the gateway runs."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.bare_limit", "--port", str(port), "--workers", str(workers)],
        cwd=str(Path(__file__).resolve().parents[1]),
    )
    try:
        await wait_http(f"http://127.0.0.1:{port}/healthz")
        await wait_listening(port, workers)
        result, (cpu,) = measure(wrk, f"http://127.0.0.1:{port}", script, seconds, [proc.pid])
        return result, cpu
    finally:
        proc.terminate()
        proc.wait(30)


def single_rows(
    limit: dict[str, float],
    limit_cpu: float,
    single: dict[str, float],
    cpu: list[float],
    two: dict[str, float],
    two_limit: dict[str, float],
) -> list[Row]:
    ratio = single["rps"] / limit["rps"] if limit["rps"] else 0.0
    two_ratio = two["rps"] / two_limit["rps"] if two_limit["rps"] else 0.0
    return [
        Row(SECTION, "machine load at start", load_average(), "quiet for final figures"),
        Row(
            SECTION,
            "bare-HTTP limit req/s (aiohttp + pydantic, no broker)",
            f"{limit['rps']:,.0f}",
            "",
        ),
        Row(SECTION, "  limit p50 / p99", f"{limit['p50']:.1f} / {limit['p99']:.1f} ms", ""),
        Row(
            SECTION,
            "POST /api/events req/s (64 clients)",
            f"{single['rps']:,.0f}",
            f">= {LIMIT_RATIO_TARGET * limit['rps']:,.0f}",
        ),
        Row(SECTION, "  ratio to the bare-HTTP limit", f"{ratio:.2f}", f">= {LIMIT_RATIO_TARGET}"),
        Row(SECTION, "POST /api/events p50 latency", f"{single.get('p50', 0):.1f} ms", ""),
        Row(SECTION, "POST /api/events p99 latency", f"{single.get('p99', 0):.1f} ms", "<= 20 ms"),
        Row(
            SECTION,
            "  CPU per request: gateway / limit",
            f"{cpu[0]:.0f} / {limit_cpu:.0f} us",
            "",
        ),
        Row(SECTION, "  CPU per event: metrics-ingest", f"{cpu[1]:.0f} us", ""),
        Row(
            SECTION,
            "POST /api/events req/s, 2 gateway processes",
            f"{two['rps']:,.0f} ({two['rps'] / max(single['rps'], 1):.2f}x of 1)",
            "",
        ),
        Row(SECTION, "  2 processes p99 latency", f"{two.get('p99', 0):.1f} ms", ""),
        Row(
            SECTION,
            "  bare-HTTP limit with 2 processes; ratio",
            f"{two_limit['rps']:,.0f}; {two_ratio:.2f}",
            "",
        ),
        Row(
            SECTION,
            "  non-2xx / socket errors (1 and 2 processes)",
            f"{single['non2xx'] + two['non2xx']:.0f} / "
            f"{single['socket_errors'] + two['socket_errors']:.0f}",
            "0 / 0",
        ),
    ]


BATCH_EVENTS = 100
BATCH_CLIENTS = 16
BATCH_TARGET_EVENTS_S = 50_000
# Paced batches in flight at most. A gateway that falls behind the schedule is not hidden: the
# sends wait for a connection, the rate answered shows it, and the lag counts from the time
# each batch was due (its events carry it), not from when the gateway took it.
PACED_MAX_IN_FLIGHT = 64
# Stands for a paced batch's due time in its prepared body (replaced as bytes, per send).
_DUE = "2000-01-01T00:00:00+00:00"


async def wait_consumers(env: Scratch, count: int, timeout: float = 90) -> None:
    """Until `count` metrics-ingest processes consume their queue (a replica just started
    imports and connects for a few seconds)."""
    queue = Topology(env.namespace).queue(METRICS_INGEST).name
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        deadline = time.monotonic() + timeout
        while True:
            declared = await channel.declare_queue(queue, passive=True)
            if (declared.declaration_result.consumer_count or 0) >= count:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{count} consumers are not on {queue}")
            await asyncio.sleep(0.2)


async def backend_cpu(conn: asyncpg.Connection) -> dict[int, float]:
    """CPU seconds of each Postgres backend of this database but `conn`'s own (the workers')."""
    pids = await conn.fetch(
        """SELECT pid FROM pg_stat_activity
           WHERE datname = current_database() AND pid <> pg_backend_pid()"""
    )
    return {r["pid"]: cpu_seconds(r["pid"]) for r in pids}


async def stored_lag(conn: asyncpg.Connection, since: datetime) -> tuple[float, float]:
    """p50 and p99 in ms of `stored_at - ts` of the events stored since `since` (the
    database's clock): from the gateway's receipt to the commit, or from the time an event
    carries (the paced phase's: when its batch was due)."""
    lag = await conn.fetchrow(
        """SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM stored_at - ts))
                    AS p50,
                  percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM stored_at - ts))
                    AS p99
           FROM events WHERE stored_at >= $1""",
        since,
    )
    assert lag is not None  # an aggregate always answers one row
    return (lag["p50"] or 0) * 1000, (lag["p99"] or 0) * 1000


async def batch_phase(
    wrk: str,
    base: str,
    conn: asyncpg.Connection,
    sessions: list[str],
    key: str,
    seconds: int,
    ingest_pids: list[int],
    gateway_pid: int,
) -> dict[str, float]:
    """Batches through the gateway; events/s counted in Postgres once the backlog drained (so
    the drain is part of the time), and the stored lag (stored_at - ts) p50 / p99 of those
    events. CPU per stored event of metrics-ingest and of its Postgres backends, from /proc."""
    before = await conn.fetchval("SELECT count(*) FROM events")
    cpu_before = sum(cpu_seconds(p) for p in ingest_pids)
    gateway_before = cpu_seconds(gateway_pid)
    pg_before = await backend_cpu(conn)
    started = time.monotonic()
    marker = await conn.fetchval("SELECT now()")
    batch = run_wrk(
        wrk,
        base,
        wrk_script(sessions, key, BATCH_EVENTS),
        seconds,
        BATCH_CLIENTS,
    )
    accepted = int(batch["requests"] - batch["non2xx"]) * BATCH_EVENTS
    drain = await drain_time(conn, before + accepted)
    elapsed = time.monotonic() - started
    stored = await conn.fetchval("SELECT count(*) FROM events") - before
    ingest_cpu = sum(cpu_seconds(p) for p in ingest_pids) - cpu_before
    gateway_cpu = cpu_seconds(gateway_pid) - gateway_before
    pg_cpu = sum(c - pg_before.get(pid, 0.0) for pid, c in (await backend_cpu(conn)).items())
    lag_p50_ms, lag_p99_ms = await stored_lag(conn, marker)
    return {
        "accepted_s": batch["rps"] * BATCH_EVENTS,
        "stored_s": stored / elapsed,
        "lag_p50_ms": lag_p50_ms,
        "lag_p99_ms": lag_p99_ms,
        "ingest_cpu_us": ingest_cpu / max(stored, 1) * 1e6,
        "pg_cpu_us": pg_cpu / max(stored, 1) * 1e6,
        # The rest of the stored event's path on these cores (the broker and wrk are not counted).
        "gateway_cpu_us": gateway_cpu / max(stored, 1) * 1e6,
        "drain_s": drain,
        "p99_ms": batch.get("p99", 0),
        # Requests still in flight when wrk stops are stored but not counted as accepted.
        "lost": max(accepted - stored, 0),
    }


async def paced_phase(
    base: str, conn: asyncpg.Connection, sessions: list[str], key: str, seconds: int
) -> dict[str, float]:
    """Batches offered at the target rate itself, on a fixed schedule (open loop: a send never
    waits for an earlier answer), for the lag at that rate: wrk offers as much as the gateway
    accepts, and when that is more than metrics-ingest stores, the lag it measures is the
    backlog's, growing with the run's length."""
    per_second = BATCH_TARGET_EVENTS_S / BATCH_EVENTS
    bodies = event_bodies(sessions, BATCH_EVENTS, 64, timestamp=_DUE)
    due = _DUE.encode()
    before = await conn.fetchval("SELECT count(*) FROM events")
    marker = await conn.fetchval("SELECT now()")
    loop = asyncio.get_running_loop()
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=PACED_MAX_IN_FLIGHT)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as http:

        async def send(body: bytes) -> bool:
            async with http.post(f"{base}/api/events/batch", data=body) as resp:
                await resp.read()
                return resp.status == 207

        sends: list[asyncio.Task[bool]] = []
        started = loop.time()
        started_wall = datetime.now(UTC)
        for i in range(int(per_second * seconds)):
            delay = started + i / per_second - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            when = (started_wall + timedelta(seconds=i / per_second)).isoformat().encode()
            sends.append(asyncio.create_task(send(bodies[i % len(bodies)].replace(due, when))))
        offered_for = loop.time() - started
        answered = await asyncio.gather(*sends)
        answered_for = loop.time() - started
    accepted = sum(answered) * BATCH_EVENTS
    drain = await drain_time(conn, before + accepted)
    lag_p50_ms, lag_p99_ms = await stored_lag(conn, marker)
    return {
        "offered_s": len(sends) * BATCH_EVENTS / offered_for,
        "answered_s": len(sends) * BATCH_EVENTS / answered_for,
        "refused": (len(sends) - sum(answered)) * BATCH_EVENTS,
        "lag_p50_ms": lag_p50_ms,
        "lag_p99_ms": lag_p99_ms,
        "drain_s": drain,
    }


def batch_rows(one: dict[str, float], two: dict[str, float]) -> list[Row]:
    rows = []
    for label, r in (("1 metrics-ingest", one), ("2 metrics-ingest", two)):
        rows += [
            Row(
                SECTION,
                f"POST /api/events/batch events/s accepted ({label})",
                f"{r['accepted_s']:,.0f}",
                "",
            ),
            Row(
                SECTION,
                "  events/s durably stored (incl. drain)",
                f"{r['stored_s']:,.0f}",
                f">= {BATCH_TARGET_EVENTS_S:,}",
            ),
            Row(
                SECTION,
                "  stored end-to-end lag p50 / p99 (as fast as accepted)",
                f"{r['lag_p50_ms']:.0f} / {r['lag_p99_ms']:.0f} ms",
                "",
            ),
            Row(
                SECTION,
                f"  lag p50 / p99 at {BATCH_TARGET_EVENTS_S:,} events/s offered (from due time)",
                f"{r['paced_lag_p50_ms']:.0f} / {r['paced_lag_p99_ms']:.0f} ms",
                "p99 < 1 s",
            ),
            Row(
                SECTION,
                "    offered; answered / refused / drained after",
                f"{r['paced_offered_s']:,.0f}; {r['paced_answered_s']:,.0f} events/s / "
                f"{r['paced_refused']:.0f} / {r['paced_drain_s']:.2f} s",
                f"{BATCH_TARGET_EVENTS_S:,}; {BATCH_TARGET_EVENTS_S:,} / 0",
            ),
            Row(
                SECTION,
                "  CPU per stored event: metrics-ingest / its Postgres backends",
                f"{r['ingest_cpu_us']:.0f} / {r['pg_cpu_us']:.0f} us",
                "",
            ),
            Row(
                SECTION,
                "  CPU per stored event: the gateway",
                f"{r['gateway_cpu_us']:.0f} us",
                "",
            ),
            Row(SECTION, "  backlog drained after load", f"{r['drain_s']:.2f} s", ""),
            Row(
                SECTION,
                f"  batch p99 latency ({BATCH_EVENTS} events)",
                f"{r['p99_ms']:.1f} ms",
                "",
            ),
            Row(SECTION, "  accepted but not stored", f"{r['lost']:.0f}", "0"),
        ]
    return rows


async def batch_phases(
    env: Scratch,
    wrk: str,
    base: str,
    conn: asyncpg.Connection,
    sessions: list[str],
    key: str,
    seconds: int,
    ingest_pid: int,
    gateway_pid: int,
) -> list[Row]:
    """The batch phases with the running metrics-ingest, then with a second one beside it:
    as fast as the gateway accepts, then paced at the target rate."""

    async def phases(ingest_pids: list[int]) -> dict[str, float]:
        fastest = await batch_phase(
            wrk, base, conn, sessions, key, seconds, ingest_pids, gateway_pid
        )
        paced = await paced_phase(base, conn, sessions, key, seconds)
        return fastest | {f"paced_{k}": v for k, v in paced.items()}

    one = await phases([ingest_pid])
    second = env.spawn("run", "metrics-ingest")
    try:
        await wait_consumers(env, 2)
        two = await phases([ingest_pid, second.pid])
    finally:
        second.terminate()
        second.wait(60)
    return batch_rows(one, two)


async def run(quick: bool) -> list[Row]:
    wrk = ensure_wrk()
    seconds = 5 if quick else 15
    rows: list[Row] = []
    async with scratch() as env:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        procs = [
            env.spawn("run", "gateway", GATEWAY_PORT=str(port), INGEST_RATE_LIMIT="100000000/1m"),
            env.spawn("run", "metrics-ingest"),
        ]
        conn = await asyncpg.connect(env.dsn)
        try:
            await wait_http(f"{base}/readyz")
            key, sessions = await setup(env, base, conn)
            await drain_time(conn, 0)
            if os.environ.get("BENCH_INGEST_PHASES", "single,batch") == "batch":
                rows.append(Row(SECTION, "machine load at start", load_average(), "quiet"))
                return rows + await batch_phases(
                    env, wrk, base, conn, sessions, key, seconds, procs[1].pid, procs[0].pid
                )

            # 1. Single events, 64 clients: the bare-HTTP limit, then one gateway process, then
            # two (GATEWAY_WORKERS=2, one port), back to back.
            script = wrk_script(sessions, key)
            bare_script = wrk_script([str(uuid.uuid4()) for _ in sessions], "")
            limit, limit_cpu = await bare_limit(wrk, bare_script, seconds)
            before = await conn.fetchval("SELECT count(*) FROM events")
            marker = await conn.fetchval("SELECT now()")
            single, cpu = measure(wrk, base, script, seconds, [p.pid for p in procs])
            accepted = int(single["requests"] - single["non2xx"])
            drain = await drain_time(conn, before + accepted)
            lag_p50_ms, lag_p99_ms = await stored_lag(conn, marker)
            two_limit, _ = await bare_limit(wrk, bare_script, seconds, workers=2)
            two_port = free_port()
            two_gateways = env.spawn(
                "run",
                "gateway",
                GATEWAY_PORT=str(two_port),
                GATEWAY_WORKERS="2",
                INGEST_RATE_LIMIT="100000000/1m",
            )
            try:
                await wait_http(f"http://127.0.0.1:{two_port}/readyz", timeout=90)
                await wait_listening(two_port, 2)
                two, _ = measure(wrk, f"http://127.0.0.1:{two_port}", script, seconds, [])
            finally:
                two_gateways.terminate()
                two_gateways.wait(60)
            # Stored before the batch phase starts counting.
            await drain_time(conn, before + accepted + int(two["requests"] - two["non2xx"]))
            rows += single_rows(limit, limit_cpu, single, cpu, two, two_limit)
            rows += [
                Row(
                    SECTION,
                    "  stored end-to-end lag p50 / p99 (1 process)",
                    f"{lag_p50_ms:.0f} / {lag_p99_ms:.0f} ms",
                    "< 1 s",
                ),
                Row(SECTION, "  backlog drained after load", f"{drain:.2f} s", ""),
            ]

            # 2. Batches of 100 events, 16 clients: one metrics-ingest, then two.
            rows += await batch_phases(
                env, wrk, base, conn, sessions, key, seconds, procs[1].pid, procs[0].pid
            )
        finally:
            await conn.close()
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)
    return rows
