"""`GATEWAY_WORKERS=N`: N gateway processes on one port, under one supervisor.

A Python process uses one core, so one host scales the gateway the way several hosts do: more
processes. Each worker is a whole gateway (its own pools, reply queue, live subscription and
caches) that listens on the same port with SO_REUSEPORT, so the kernel spreads connections
over them; what must be shared across them already is (rate-limit windows in Postgres, session
ids that verify themselves), exactly as across hosts.

The supervisor checks the port once (a taken port stops it with the entry's one line naming
`GATEWAY_PORT`; `0` picks a free one for all workers), starts the workers, forwards SIGTERM /
SIGINT to them, and exits when they have drained. If a worker dies on its own the supervisor
stops the others and exits non-zero, so the container or process manager restarts the whole
gateway rather than running short of processes unnoticed.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
from multiprocessing.process import BaseProcess
from types import FrameType

from chatbeto.failures import explain
from chatbeto.logging import configure, get_logger
from chatbeto.settings import GatewaySettings
from structlog.contextvars import bind_contextvars

log = get_logger("chatbeto.gateway.supervisor")
# Workers drain for up to the app's shutdown timeout (30 s); past this they are killed.
STOP_TIMEOUT_SECONDS = 40.0
POLL_SECONDS = 0.2
# prometheus_client's multiprocess mode: every worker writes its samples under this directory
# and `/metrics` (whichever worker answers) sums them.
PROMETHEUS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def reserve_port(host: str, port: int) -> int:
    """The port the workers will share: check it is free (0: pick one). Binding without
    SO_REUSEPORT fails even against a process that holds the port with it; the OSError is the
    entry's to explain (one line naming GATEWAY_PORT)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        return int(probe.getsockname()[1])


def _worker(settings: GatewaySettings, index: int) -> None:
    """One gateway process (the target of a spawned process)."""
    # Its own process group: a terminal's Ctrl-C reaches only the supervisor, which forwards
    # one SIGTERM (a second signal would interrupt the worker's drain).
    os.setpgrp()
    configure(settings.log_level, settings.log_format, "gateway")
    bind_contextvars(worker=index)
    from chatbeto_gateway.app import run

    try:
        run(settings, reuse_port=True, watch_parent=True)
    except Exception as exc:
        # A worker does not start through `chatbeto.cli.main`: explain its failure the same way.
        line = explain(exc, "gateway")
        if line is None:
            raise
        print(f"chatbeto: {line}", file=sys.stderr)
        sys.exit(1)


def supervise(settings: GatewaySettings) -> int:
    port = reserve_port(settings.gateway_host, settings.gateway_port)
    workers = settings.gateway_workers
    worker_settings = settings.model_copy(update={"gateway_port": port})
    metrics_dir = tempfile.mkdtemp(prefix="chatbeto-gateway-metrics-")
    os.environ[PROMETHEUS_DIR_ENV] = metrics_dir  # inherited by the spawned workers
    stopping: list[int] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    ctx = multiprocessing.get_context("spawn")
    procs: list[BaseProcess] = []
    code = 0
    try:
        for index in range(workers):
            worker: BaseProcess = ctx.Process(
                target=_worker, args=(worker_settings, index), name=f"gateway-{index}"
            )
            worker.start()
            procs.append(worker)
        log.info("gateway started", workers=workers, host=settings.gateway_host, port=port)
        while not stopping:
            multiprocessing.connection.wait([p.sentinel for p in procs], POLL_SECONDS)
            dead = [p for p in procs if not p.is_alive()]
            if dead and not stopping:
                log.error(
                    "gateway worker exited; stopping the others",
                    worker=dead[0].name,
                    exit_code=dead[0].exitcode,
                )
                code = 1
                break
    finally:
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.join(STOP_TIMEOUT_SECONDS)
            if proc.is_alive():
                log.error("gateway worker did not stop in time; killed", worker=proc.name)
                proc.kill()
                proc.join()
                code = 1
            elif stopping and proc.exitcode not in (0, -signal.SIGTERM):
                code = 1
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    log.info("gateway stopped", workers=workers)
    return code
