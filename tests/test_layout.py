"""The package map: `shared/` and the services are libraries and processes, never tools."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_no_library_or_service_module_imports_the_tools() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("shared", "services")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if any(m.split(".")[0] == "chatbeto_tools" for m in imported_modules(path))
    ]
    assert offenders == []


def test_the_tools_live_in_their_own_package() -> None:
    tools = ROOT / "tools/chatbeto_tools"
    for name in ("cli.py", "dev.py", "dlq.py", "webhook_sim.py", "import_cli.py", "stub"):
        assert (tools / name).exists(), name
    for name in ("cli.py", "dev.py", "dlq.py", "webhook_sim.py"):
        assert not (ROOT / "shared/chatbeto" / name).exists(), name
    assert not (ROOT / "services/openai-worker/chatbeto_openai_worker/stub").exists()


def test_conversations_messages_and_jobs_are_written_only_by_the_store() -> None:
    """One writer (shared/chatbeto/store) for every service, the importer and the CLI."""
    writes = ("INTO messages", "INTO conversations", "INTO jobs", "UPDATE jobs", "FROM messages m")
    writers = sorted(
        str(path.relative_to(ROOT))
        for folder in ("shared", "services", "tools")
        for path in (ROOT / folder).rglob("*.py")
        if any(w in path.read_text() for w in writes)
    )
    # The gateway's sync-job row is the last one outside the store (until it imports the store).
    assert set(writers) <= {
        "shared/chatbeto/store/conversations.py",
        "shared/chatbeto/store/jobs.py",
        "services/gateway/chatbeto_gateway/conversations/repo.py",
    }, writers
