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
