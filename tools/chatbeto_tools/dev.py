"""`chatbeto dev` (what `make dev` runs): every service in the foreground, one terminal.

Without OPENAI_API_KEY the local OpenAI-compatible stub starts too and the workers are pointed
at it. Each worker gets a health port of its own (its variable if set, else its default, else
a free one when that is taken — other programs on a developer's machine hold ports), so a busy
port never stops `make dev`. On a terminal the logs are for humans (LOG_FORMAT=console) and one
banner says where everything is and what to run next. Ctrl-C / SIGTERM stops everything within
a few seconds; if one service dies, the rest are stopped.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from chatbeto.failures import UsageError
from chatbeto.logging import configure, get_logger
from chatbeto.settings import GatewaySettings, load

log = get_logger("chatbeto.dev")
SERVICES = ("gateway", "openai-worker", "metrics-ingest", "webhook")
# The workers' health ports: the variable that sets each one (contract 3.0) and its default.
WORKER_PORTS = {
    "openai-worker": ("OPENAI_WORKER_HEALTH_PORT", 8081),
    "metrics-ingest": ("METRICS_INGEST_HEALTH_PORT", 8082),
    "webhook": ("WEBHOOK_HEALTH_PORT", 8083),
}
STUB_PORT = 8099
DOTENV = Path(".env")
# Services drain in-flight work on SIGTERM; past this, they are killed (dev data is idempotent).
STOP_GRACE_SECONDS = 5.0
READY_TIMEOUT_SECONDS = 90.0
READY_POLL_SECONDS = 0.25


@dataclass(frozen=True)
class Port:
    number: int
    why: str  # "default", "VARIABLE", "8082 was taken"


def dotenv_values(path: Path = DOTENV) -> dict[str, str]:
    from dotenv import dotenv_values as read

    return {k: v for k, v in read(path).items() if v is not None} if path.exists() else {}


def is_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        # As the services bind (aiohttp sets SO_REUSEADDR): a port in TIME_WAIT is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(host: str, count: int) -> list[int]:
    """`count` distinct ports free now (held open together, so no two are the same)."""
    held = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((host, 0))
            held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def plan_ports(
    env: Mapping[str, str], dotenv: Mapping[str, str], host: str = "127.0.0.1"
) -> dict[str, Port]:
    """Each worker's health port: its variable (environment, then .env) wins; else its
    default when free; else a free port. HEALTH_PORT is not used: it would put all three on
    one port."""
    out: dict[str, Port] = {}
    moved = []
    for service, (variable, default) in WORKER_PORTS.items():
        given = env.get(variable) or dotenv.get(variable)
        if given:
            try:
                out[service] = Port(int(given), variable)
            except ValueError:
                raise UsageError(
                    f"configuration error: {variable}: not a port: {given!r}"
                ) from None
        elif is_free(host, default):
            out[service] = Port(default, "default")
        else:
            moved.append((service, default))
    taken = {p.number for p in out.values()}
    spare = [p for p in free_ports(host, len(moved) + len(taken)) if p not in taken]
    for (service, default), number in zip(moved, spare, strict=False):
        out[service] = Port(number, f"{default} was taken")
    return out


def ensure_webhook_secret(env: Mapping[str, str], path: Path = DOTENV) -> tuple[str, bool]:
    """The webhook secret in effect; made once (and kept in `.env`) when none is set.

    Returns (secret, generated now). A `whsec_` secret signs both schemes.
    """
    current = env.get("WEBHOOK_SECRET") or dotenv_values(path).get("WEBHOOK_SECRET")
    if current:
        return current, False
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    existing = path.read_text() if path.exists() else ""
    with path.open("a") as f:
        if existing and not existing.endswith("\n"):
            f.write("\n")
        f.write("# made by `make dev`: the development secret of /webhook/chatgpt\n")
        f.write(f"WEBHOOK_SECRET={secret}\n")
    return secret, True


def _pump(name: str, stream: IO[bytes]) -> None:
    for line in iter(stream.readline, b""):
        sys.stderr.write(f"{name:>15} | {line.decode(errors='replace')}")
        sys.stderr.flush()


def _spawn(name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # A session of its own: the terminal's Ctrl-C reaches only us, and each service then gets
    # exactly one SIGTERM (a second signal would cut its drain short).
    proc = subprocess.Popen(  # noqa: S603
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    assert proc.stdout is not None
    threading.Thread(target=_pump, args=(name, proc.stdout), daemon=True).start()
    return proc


def _command(exe: Path) -> str:
    """How the user types our executable from here (`.venv/bin/chatbeto` in a clone)."""
    try:
        return str(exe.relative_to(Path.cwd()))
    except ValueError:
        return str(exe)


DEFAULT_BASE_URL = "http://127.0.0.1:8080"
SAMPLE_WEBHOOK = (
    '{"projectId": %s, "title": "hello", "messages": [{"role": "user", "content": "hi"}]}'
)


def banner(
    base_url: str,
    stub_url: str | None,
    ports: Mapping[str, Port],
    secret_generated: bool,
    cli: str,
    ready: bool,
) -> str:
    """What `make dev` prints once the services answer; README's quickstart follows it."""
    answers = (
        f"the local OpenAI stub at {stub_url} (no OPENAI_API_KEY; set one for OpenAI)"
        if stub_url
        else "OpenAI (OPENAI_API_KEY is set)"
    )
    workers = ", ".join(
        f"{name} :{p.number}" + (f" ({p.why})" if p.why.endswith("taken") else "")
        for name, p in ports.items()
    )
    secret = "made now, kept in .env" if secret_generated else "from your settings"
    url = "" if base_url == DEFAULT_BASE_URL else f" --url {base_url}/webhook/chatgpt"
    lines = [
        "",
        "chatbeto is running" if ready else "chatbeto is starting (not ready yet: see the logs)",
        f"  gateway      {base_url}",
        f"  dashboard    {base_url}/dashboard",
        f"  OpenAPI      {base_url}/openapi.json",
        f"  model calls  {answers}",
        f"  workers      {workers} (/healthz /readyz /metrics)",
        f"  webhooks     {base_url}/webhook/chatgpt, WEBHOOK_SECRET {secret}",
        "",
        "next, in another terminal:",
        f"  P=$({cli} projects create demo | tail -1)",
        f"  KEY=$({cli} keys create --project $P | tail -1)",
        f"  {cli} gpts add devops-expert --name 'DevOps Expert' --project $P --keyless-ingest",
        f"  printf '{SAMPLE_WEBHOOK}' $P | {cli} webhook send --event conversation.created"
        f" --file -{url}",
        f"  # then open {base_url}/dashboard and paste $KEY",
        "",
        "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


def _wait_ready(url: str, stopping: threading.Event) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline and not stopping.is_set():
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - our own URL
                if resp.status == 200:
                    return True
        except OSError:
            pass
        stopping.wait(READY_POLL_SECONDS)
    return False


@dataclass
class Plan:
    """What the services are started with, and what the banner says about it."""

    env: dict[str, str]
    base_url: str
    ports: dict[str, Port]
    secret_generated: bool
    stub_port: int | None


def plan() -> Plan:
    dotenv = dotenv_values()
    env = dict(os.environ)
    if sys.stderr.isatty() and "LOG_FORMAT" not in env and "LOG_FORMAT" not in dotenv:
        env["LOG_FORMAT"] = os.environ["LOG_FORMAT"] = "console"
    settings = load(GatewaySettings)
    configure(settings.log_level, settings.log_format, "dev")
    host = settings.gateway_host
    near = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    gateway_port = settings.gateway_port or free_ports(near, 1)[0]
    if not is_free(host, gateway_port):
        raise UsageError(
            f"port taken: {host}:{gateway_port} (GATEWAY_PORT): stop what uses it, "
            "or set GATEWAY_PORT to a free port"
        )
    env["GATEWAY_PORT"] = str(gateway_port)
    ports = plan_ports(env, dotenv, env.get("HEALTH_HOST") or dotenv.get("HEALTH_HOST") or near)
    for name, port in ports.items():
        env[WORKER_PORTS[name][0]] = str(port.number)
        if port.why.endswith("taken"):
            log.warning("health port taken, using another", service=name, port=port.number)
    if env.get("HEALTH_PORT") or dotenv.get("HEALTH_PORT"):
        log.warning("HEALTH_PORT is not used by make dev: each worker gets its own port")
    env["WEBHOOK_SECRET"], generated = ensure_webhook_secret(env)
    stub_port = None
    if not env.get("OPENAI_API_KEY"):
        stub_port = STUB_PORT if is_free(near, STUB_PORT) else free_ports(near, 1)[0]
        env["OPENAI_API_KEY"] = "sk-local-stub"
        env["OPENAI_BASE_URL"] = f"http://127.0.0.1:{stub_port}/v1"
    return Plan(env, f"http://{near}:{gateway_port}", ports, generated, stub_port)


def main() -> int:
    setup = plan()
    env = setup.env
    exe = Path(sys.executable).with_name("chatbeto")
    # Migrations and topology first, with the same settings and log format as the services.
    migrated = subprocess.run([str(exe), "migrate"], env=env, check=False)  # noqa: S603
    if migrated.returncode != 0:
        return migrated.returncode  # its one line is already on stderr
    procs: dict[str, subprocess.Popen[bytes]] = {}
    stub_url = None
    if setup.stub_port is not None:
        stub_url = env["OPENAI_BASE_URL"]
        log.warning(
            "OPENAI_API_KEY is not set: using the local OpenAI stub, not OpenAI", url=stub_url
        )
        procs["openai-stub"] = _spawn(
            "openai-stub",
            [sys.executable, "-m", "chatbeto_tools.stub", "--port", str(setup.stub_port)],
            env,
        )
    for name in SERVICES:
        procs[name] = _spawn(name, [str(exe), "run", name], env)

    stopping = threading.Event()
    interrupts = 0

    def stop(*_: object) -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts > 1:  # asked twice: no more waiting
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def announce() -> None:
        health = setup.base_url.rsplit(":", 1)[0]
        urls = [f"{setup.base_url}/readyz"] + [
            f"{health}:{p.number}/readyz" for p in setup.ports.values() if p.number
        ]
        ready = all(_wait_ready(u, stopping) for u in urls)
        if not stopping.is_set():
            text = banner(
                setup.base_url, stub_url, setup.ports, setup.secret_generated, _command(exe), ready
            )
            sys.stderr.write(text)
            sys.stderr.flush()

    threading.Thread(target=announce, daemon=True).start()
    return _stop_all(procs, _supervise(procs, stopping))


def _supervise(procs: Mapping[str, subprocess.Popen[bytes]], stopping: threading.Event) -> int:
    """Until asked to stop, or until a service exits (then its code)."""
    while not stopping.is_set():
        for name, proc in procs.items():
            if proc.poll() is not None:
                log.error("service exited; stopping the others", service=name, code=proc.returncode)
                return proc.returncode or 1
        stopping.wait(0.2)
    return 0


def _stop_all(procs: Mapping[str, subprocess.Popen[bytes]], code: int) -> int:
    log.info("stopping every service")
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for name, proc in procs.items():
        try:
            proc.wait(max(0.05, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("service did not stop in time; killed", service=name)
            proc.kill()
            proc.wait()
    log.info("all services stopped")
    return code
