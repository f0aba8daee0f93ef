"""Run the benchmarks and print one table: `python -m bench [SECTION ...] [--quick]`."""

from __future__ import annotations

import argparse
import asyncio
import importlib

from bench.common import Row

SECTIONS = ("ingest", "ratelimit", "proxy", "importer", "dashboard")


def print_table(rows: list[Row]) -> None:
    headers = ("section", "metric", "value", "target")
    cells = [headers, *((r.section, r.metric, r.value, r.target) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    line = "+".join("-" * (w + 2) for w in widths)
    for n, cell in enumerate(cells):
        print(" | ".join(v.ljust(w) for v, w in zip(cell, widths, strict=True)))
        if n == 0:
            print(line)


async def main() -> None:
    parser = argparse.ArgumentParser(prog="make bench")
    parser.add_argument("sections", nargs="*", default=list(SECTIONS))
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    args = parser.parse_args()
    rows: list[Row] = []
    for name in args.sections:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError:
            print(f"(section {name} not available)")
            continue
        print(f"running {name} ...", flush=True)
        rows.extend(await module.run(args.quick))
    print()
    print_table(rows)


if __name__ == "__main__":
    asyncio.run(main())
