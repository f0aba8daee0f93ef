"""A private RabbitMQ node for tests that stop, restart or cut the broker.

The machine's RabbitMQ (127.0.0.1:5672) is shared by every other test: never touch it. This
node has its own name, ports, data directory and config file (see
/work/shared/notes/private-rabbitmq-node.md for why each variable is needed) and is always
stopped by the fixture's teardown.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# A node answers within 2-10 s on a quiet machine; a busy 2-core CI box can take far longer.
START_TIMEOUT_SECONDS = 120.0
CTL_TIMEOUT_SECONDS = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RabbitNode:
    """One node: `start`, the three faults (`stop_app`/`start_app`, `stop`/`start`,
    `close_all_connections`), and `destroy`."""

    def __init__(self) -> None:
        self.name = f"cbt{uuid.uuid4().hex[:10]}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="chatbeto-rabbit-"))
        (self.base / "mnesia").mkdir()
        (self.base / "log").mkdir()
        (self.base / "node.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users.guest = true\n"
        )
        (self.base / "enabled_plugins").write_text("[].\n")
        shutil.chown(self.base, "rabbitmq", "rabbitmq")
        for path in self.base.rglob("*"):
            shutil.chown(path, "rabbitmq", "rabbitmq")
        self.base.chmod(0o755)
        self.running = False

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_MNESIA_BASE=str(self.base / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.base / "log"),
            RABBITMQ_PID_FILE=str(self.base / "node.pid"),
            RABBITMQ_CONFIG_FILE=str(self.base / "node.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base / "enabled_plugins"),
        )
        return env

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["rabbitmqctl", "-q", "-n", self.name, *args],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=CTL_TIMEOUT_SECONDS,
            check=check,
        )

    def _await_startup(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            done = self.ctl("await_startup", check=False)
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"private RabbitMQ node {self.name} did not start within "
                    f"{START_TIMEOUT_SECONDS}s: {done.stderr.strip()[-500:]}"
                )
            time.sleep(1)

    def start(self) -> None:
        """Start the node (first time, or again after `stop`: its durable queues survive)."""
        subprocess.run(
            ["rabbitmq-server", "-detached"],
            env=self._env(),
            check=True,
            timeout=CTL_TIMEOUT_SECONDS,
            capture_output=True,
        )
        self.running = True
        self._await_startup()

    def stop(self) -> None:
        """Stop the whole node (the Erlang VM): a full broker stop."""
        self.ctl("stop", check=False)
        self.running = False

    def stop_app(self) -> None:
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        self._await_startup()

    def close_all_connections(self) -> None:
        self.ctl("close_all_connections", "test: dropped connections")

    def consumers(self, queue: str) -> int:
        """Consumers the broker has registered on `queue` (0 if it does not exist)."""
        out = self.ctl("list_queues", "name", "consumers", "--no-table-headers", check=False)
        for line in out.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == queue:
                return int(parts[1])
        return 0

    def destroy(self) -> None:
        if self.running:
            self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="module")
def rabbit_node() -> Iterator[RabbitNode]:
    """A private node for this module's tests; stopped and removed afterwards."""
    if shutil.which("rabbitmq-server") is None:
        pytest.skip("rabbitmq-server is not installed: no private broker node for this test")
    node = RabbitNode()
    try:
        node.start()
        yield node
    finally:
        node.destroy()
