"""The `chatbeto` command line."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from chatbeto.settings import BaseServiceSettings, RateLimit, load

SERVICES = {
    "gateway": "chatbeto_gateway.main",
    "openai-worker": "chatbeto_openai_worker.main",
    "metrics-ingest": "chatbeto_metrics_ingest.main",
    "webhook": "chatbeto_webhook.main",
}

# Extra subcommands contributed by feature modules: name -> module with `register(subparsers)`.
PLUGINS = ("chatbeto.dlq", "chatbeto.importer.cli", "chatbeto.webhook_sim")


def _positive_int(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 2**63:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def cmd_migrate(args: argparse.Namespace) -> int:
    from chatbeto.logging import configure
    from chatbeto.migrate import apply_migrations

    settings = load(BaseServiceSettings)
    configure(settings.log_level, settings.log_format, "migrate")

    async def go() -> list[str]:
        applied = await apply_migrations(settings.database_url)
        from chatbeto import broker

        connection = await broker.connect(settings.amqp_url, attempts=10)
        async with connection:
            channel = await connection.channel()
            await settings.topology.declare(channel)
        return applied

    applied = _run(go())
    print(f"migrations applied: {len(applied)}; broker topology declared")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    module = importlib.import_module(SERVICES[args.service])
    result: int = module.main()
    return result


def cmd_dev(args: argparse.Namespace) -> int:
    from chatbeto.dev import main as dev_main

    return dev_main()


async def _with_pool(fn: Callable[[Any], Awaitable[Any]]) -> Any:
    import asyncpg

    settings = load(BaseServiceSettings)
    conn = await asyncpg.connect(settings.database_url)
    try:
        return await fn(conn)
    finally:
        await conn.close()


def cmd_projects_create(args: argparse.Namespace) -> int:
    async def go(conn: Any) -> int:
        value: int = await conn.fetchval(
            "INSERT INTO projects (name) VALUES ($1) RETURNING id", args.name
        )
        return value

    project_id = _run(_with_pool(go))
    print(f"project {args.name!r} created")
    print(project_id)
    return 0


def cmd_projects_list(args: argparse.Namespace) -> int:
    async def go(conn: Any) -> list[Any]:
        return list(await conn.fetch("SELECT id, name, created_at FROM projects ORDER BY id"))

    for row in _run(_with_pool(go)):
        print(f"{row['id']}\t{row['name']}\t{row['created_at']:%Y-%m-%d %H:%M}")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    from chatbeto import api_keys

    if args.rate_limit:
        try:
            args.rate_limit = str(RateLimit.parse(args.rate_limit))
        except ValueError as exc:
            print(f"--rate-limit: {exc}", file=sys.stderr)
            return 2
    if args.budget:
        from chatbeto.spend import Budget

        try:
            args.budget = str(Budget.parse(args.budget))
        except ValueError as exc:
            print(f"--budget: {exc}", file=sys.stderr)
            return 2

    async def go(conn: Any) -> str:
        if args.project is not None and not await conn.fetchval(
            "SELECT 1 FROM projects WHERE id = $1", args.project
        ):
            raise SystemExit(f"project {args.project} does not exist")
        plain, _ = await api_keys.create(
            conn,
            is_admin=args.admin,
            project_id=args.project,
            name=args.name,
            rate_limit=args.rate_limit,
            budget=args.budget,
            tpm=args.tpm,
        )
        return plain

    plain = _run(_with_pool(go))
    print("key created; it is shown once, store it now:", file=sys.stderr)
    print(plain)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    from chatbeto import api_keys, spend

    async def go(conn: Any) -> Any:
        keys = await api_keys.list_keys(conn)
        return keys, await spend.budget_windows(conn, [(k.id, k.budget) for k in keys])

    rows, windows = _run(_with_pool(go))
    # `spent` is the spend in the budget's window (the calendar month for a key without one).
    print("prefix\tname\tproject\tlimit\tbudget\tspent_usd\ttpm\tlast_used\trevoked")
    for k in rows:
        project = "admin" if k.is_admin else str(k.project_id)
        used = f"{k.last_used_at:%Y-%m-%d %H:%M:%S}" if k.last_used_at else "never"
        revoked = "revoked" if k.revoked_at else ""
        spent = f"{windows[k.id].usd:.6f}"
        print(
            f"{k.prefix}\t{k.name or ''}\t{project}\t{k.rate_limit or 'default'}\t"
            f"{k.budget or 'none'}\t{spent}\t{k.tpm or 'none'}\t{used}\t{revoked}"
        )
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from chatbeto import api_keys

    async def go(conn: Any) -> bool:
        return await api_keys.revoke(conn, args.key)

    if not _run(_with_pool(go)):
        print("no such active key", file=sys.stderr)
        return 1
    print(f"revoked {api_keys.prefix_of(args.key)}")
    return 0


def cmd_gpts_add(args: argparse.Namespace) -> int:
    async def go(conn: Any) -> None:
        if not await conn.fetchval("SELECT 1 FROM projects WHERE id = $1", args.project):
            raise SystemExit(f"project {args.project} does not exist")
        await conn.execute(
            """INSERT INTO gpts (gpt_id, name, project_id, keyless_ingest) VALUES ($1, $2, $3, $4)
               ON CONFLICT (gpt_id) DO UPDATE SET name = EXCLUDED.name,
                   keyless_ingest = EXCLUDED.keyless_ingest
               WHERE gpts.project_id IS NOT DISTINCT FROM EXCLUDED.project_id""",
            args.gpt_id,
            args.name,
            args.project,
            args.keyless_ingest,
        )

    _run(_with_pool(go))
    print(f"GPT {args.gpt_id} registered")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chatbeto", description="chatbeto gateway and workers")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser(
        "migrate", help="create the database, apply migrations, declare topology"
    ).set_defaults(func=cmd_migrate)
    run = sub.add_parser("run", help="run one service")
    run.add_argument("service", choices=sorted(SERVICES))
    run.set_defaults(func=cmd_run)
    sub.add_parser(
        "dev", help="run every service (and the OpenAI stub without a key)"
    ).set_defaults(func=cmd_dev)

    projects = sub.add_parser("projects").add_subparsers(dest="action", required=True)
    pc = projects.add_parser("create")
    pc.add_argument("name")
    pc.set_defaults(func=cmd_projects_create)
    projects.add_parser("list").set_defaults(func=cmd_projects_list)

    keys = sub.add_parser("keys").add_subparsers(dest="action", required=True)
    kc = keys.add_parser("create")
    who = kc.add_mutually_exclusive_group(required=True)
    who.add_argument("--admin", action="store_true")
    who.add_argument("--project", type=int)
    kc.add_argument("--name")
    kc.add_argument("--rate-limit", help="e.g. 50/15m (overrides RATE_LIMIT for this key)")
    kc.add_argument("--budget", help="USD per window, e.g. 20/1mo (calendar month) or 5/1d")
    kc.add_argument("--tpm", type=_positive_int, help="tokens per minute")
    kc.set_defaults(func=cmd_keys_create)
    keys.add_parser("list").set_defaults(func=cmd_keys_list)
    kr = keys.add_parser("revoke")
    kr.add_argument("key", metavar="KEY_OR_PREFIX")
    kr.set_defaults(func=cmd_keys_revoke)

    gpts = sub.add_parser("gpts").add_subparsers(dest="action", required=True)
    ga = gpts.add_parser("add")
    ga.add_argument("gpt_id")
    ga.add_argument("--name", required=True)
    ga.add_argument("--project", type=int, required=True)
    ga.add_argument("--keyless-ingest", action="store_true")
    ga.set_defaults(func=cmd_gpts_add)

    for name in PLUGINS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                continue  # that feature is not built yet
            raise
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"chatbeto: cannot connect: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
