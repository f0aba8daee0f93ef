"""`chatbeto import FILE --project ID`: a progress bar on a terminal, then a summary."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any, TextIO

from chatbeto.importer.export import ExportError
from chatbeto.importer.run import Summary, import_file
from chatbeto.settings import BaseServiceSettings, load

BAR_WIDTH = 30
REDRAW_SECONDS = 0.1
LISTED_SKIPPED = 20


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "import",
        help="import a ChatGPT data export (.zip, unpacked folder or JSON file; either layout)",
    )
    p.add_argument(
        "file",
        metavar="FILE",
        help="the export .zip, its unpacked folder, conversations.json or a conversations-NNN.json",
    )
    p.add_argument("--project", type=int, required=True, help="project id to import into")
    p.set_defaults(func=cmd_import)


class Bar:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._enabled = out.isatty()
        self._drawn = 0.0
        self._started = time.monotonic()

    async def update(self, summary: Summary, fraction: float) -> None:
        now = time.monotonic()
        if not self._enabled or (now - self._drawn < REDRAW_SECONDS and fraction < 1):
            return
        self._drawn = now
        filled = int(BAR_WIDTH * fraction)
        rate = summary.messages / max(now - self._started, 1e-6)
        self._out.write(
            f"\r[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction:4.0%} "
            f"{summary.seen} conversations, {summary.messages} messages ({rate:,.0f}/s)"
        )
        self._out.flush()

    def finish(self) -> None:
        if self._enabled and self._drawn:
            self._out.write("\n")


def report(summary: Summary, out: TextIO, seconds: float) -> None:
    print(
        f"imported {summary.imported} conversations ({summary.messages} new messages), "
        f"updated {summary.updated}, skipped {summary.skipped}, failed {summary.failed} "
        f"in {seconds:.1f}s",
        file=out,
    )
    for title in summary.skipped_titles[:LISTED_SKIPPED]:
        print(f"  skipped: {title!r}: already imported, nothing new", file=out)
    if summary.skipped > LISTED_SKIPPED:
        print(f"  … and {summary.skipped - LISTED_SKIPPED} more skipped", file=out)
    for failure in summary.failures:
        print(f"  failed: {failure.title!r} ({failure.id}): {failure.reason}", file=out)
    if summary.failed > len(summary.failures):
        print(f"  … and {summary.failed - len(summary.failures)} more failed", file=out)


def cmd_import(args: argparse.Namespace) -> int:
    settings = load(BaseServiceSettings)
    bar = Bar(sys.stderr)
    started = time.monotonic()
    try:
        summary = asyncio.run(
            import_file(settings.database_url, args.file, args.project, bar.update)
        )
    except ExportError as exc:
        bar.finish()
        print(f"chatbeto import: {args.file}: {exc}", file=sys.stderr)
        return 1
    bar.finish()
    report(summary, sys.stdout, time.monotonic() - started)
    # Some conversations could not be imported: say so in the exit code too.
    return 3 if summary.failed else 0
