"""`chatbeto dev` (what `make dev` runs): every service in the foreground, one terminal.

Without OPENAI_API_KEY the local OpenAI-compatible stub starts too and the workers are pointed
at it. Ctrl-C / SIGTERM stops everything cleanly; if one service dies, the rest are stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from chatbeto.logging import configure, get_logger
from chatbeto.settings import BaseServiceSettings, load

log = get_logger("chatbeto.dev")
SERVICES = ("gateway", "openai-worker", "metrics-ingest", "webhook")
STUB_PORT = 8099
STOP_TIMEOUT_SECONDS = 35


def _pump(name: str, stream: object) -> None:
    for line in iter(stream.readline, b""):  # type: ignore[attr-defined]
        sys.stderr.write(f"{name:>15} | {line.decode(errors='replace')}")
        sys.stderr.flush()


def _spawn(name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # noqa: S603
    threading.Thread(target=_pump, args=(name, proc.stdout), daemon=True).start()
    return proc


def main() -> int:
    settings = load(BaseServiceSettings)
    configure(settings.log_level, settings.log_format, "dev")
    env = dict(os.environ)
    exe = str(Path(sys.executable).with_name("chatbeto"))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    if not env.get("OPENAI_API_KEY"):
        env["OPENAI_API_KEY"] = "sk-local-stub"
        env["OPENAI_BASE_URL"] = f"http://127.0.0.1:{STUB_PORT}/v1"
        log.warning(
            "OPENAI_API_KEY is not set: using the local OpenAI stub, not OpenAI",
            stub_url=env["OPENAI_BASE_URL"],
        )
        procs["openai-stub"] = _spawn(
            "openai-stub",
            [sys.executable, "-m", "chatbeto_openai_worker.stub", "--port", str(STUB_PORT)],
            env,
        )
    for name in SERVICES:
        procs[name] = _spawn(name, [exe, "run", name], env)

    stopping = threading.Event()

    def stop(*_: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = 0
    while not stopping.is_set():
        for name, proc in procs.items():
            if proc.poll() is not None:
                log.error("service exited; stopping the others", service=name, code=proc.returncode)
                code = proc.returncode or 1
                stopping.set()
                break
        stopping.wait(0.5)
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for proc in procs.values():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
    log.info("all services stopped")
    return code
