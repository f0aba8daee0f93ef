"""The `chatbeto` command line."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from chatbeto.failures import UsageError, explain, setting
from chatbeto.settings import BaseServiceSettings, RateLimit, load

SERVICES = {
    "gateway": "chatbeto_gateway.main",
    "openai-worker": "chatbeto_openai_worker.main",
    "metrics-ingest": "chatbeto_metrics_ingest.main",
    "webhook": "chatbeto_webhook.main",
}

# Extra subcommands contributed by feature modules: name -> module with `register(subparsers)`.
PLUGINS = ("chatbeto_tools.dlq", "chatbeto_tools.import_cli", "chatbeto_tools.webhook_sim")


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
    from chatbeto_tools.dev import main as dev_main

    return dev_main()


async def _with_pool(fn: Callable[[Any], Awaitable[Any]]) -> Any:
    from chatbeto.db import connect

    settings = load(BaseServiceSettings)
    conn = await connect(settings.database_url)
    try:
        return await fn(conn)
    finally:
        await conn.close()


def cmd_projects_create(args: argparse.Namespace) -> int:
    from chatbeto.store import projects

    try:
        name = projects.clean_name(args.name)
    except ValueError as exc:
        raise UsageError(f"projects create: NAME {exc}") from None

    async def go(conn: Any) -> int:
        try:
            row = await projects.create(conn, name)
        except projects.ProjectExists as exc:
            raise UsageError(
                f"a project named {name!r} already exists (id {exc.existing_id}): "
                "pick another name, or use that id"
            ) from None
        value: int = row["id"]
        return value

    project_id = _run(_with_pool(go))
    print(f"project {name!r} created")
    print(project_id)
    return 0


def cmd_projects_list(args: argparse.Namespace) -> int:
    from chatbeto.store import projects

    rows = _run(_with_pool(projects.list_all))
    print("id\tname\tcreated")
    for row in rows:
        print(f"{row['id']}\t{row['name']}\t{row['created_at']:%Y-%m-%d %H:%M}")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    from chatbeto import api_keys
    from chatbeto.store import projects

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
        if args.project is not None and not await projects.exists(conn, args.project):
            raise UsageError(
                f"project {args.project} does not exist (see `chatbeto projects list`)"
            )
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
    from chatbeto.store import gpts, projects

    try:
        gpt_id = gpts.check_id(args.gpt_id)
        name = gpts.check_name(args.name) if args.name is not None else None
    except ValueError as exc:
        which = "GPT_ID" if args.name is None or "128" in str(exc) else "--name"
        raise UsageError(f"gpts add: {which} {exc}") from None

    async def go(conn: Any) -> str:
        existing = await gpts.get(conn, gpt_id)
        if existing is None:
            if name is None or args.project is None:
                raise UsageError(f"gpts add: a new GPT needs --name and --project ({gpt_id!r})")
            if not await projects.exists(conn, args.project):
                raise UsageError(
                    f"project {args.project} does not exist (see `chatbeto projects list`)"
                )
            keyless = bool(args.keyless_ingest)
            if await gpts.add(conn, gpt_id, name, args.project, keyless):
                return (
                    f"GPT {gpt_id} registered in project {args.project} "
                    f"(keyless ingest {_on(keyless)})"
                )
            existing = await gpts.get(conn, gpt_id)  # registered meanwhile by someone else
            assert existing is not None
        return await _update_gpt(conn, args, existing, name)

    print(_run(_with_pool(go)))
    return 0


def _on(flag: bool) -> str:
    return "on" if flag else "off"


async def _update_gpt(conn: Any, args: argparse.Namespace, gpt: Any, name: str | None) -> str:
    from chatbeto.store import gpts

    described = (
        f"name {gpt.name!r}, project {gpt.project_id}, keyless ingest {_on(gpt.keyless_ingest)}"
    )
    if not args.update:
        raise UsageError(
            f"GPT {gpt.gpt_id!r} already exists ({described}): "
            "pass --update to change it, or pick another id"
        )
    if gpt.builtin:
        raise UsageError(f"GPT {gpt.gpt_id!r} is built in: it cannot be changed")
    if args.project is not None and args.project != gpt.project_id:
        raise UsageError(
            f"GPT {gpt.gpt_id!r} belongs to project {gpt.project_id}: "
            "a GPT does not move between projects"
        )
    new_name = name if name is not None else gpt.name
    keyless = gpt.keyless_ingest if args.keyless_ingest is None else args.keyless_ingest
    changes = []
    if new_name != gpt.name:
        changes.append(f"name {gpt.name!r} -> {new_name!r}")
    if keyless != gpt.keyless_ingest:
        changes.append(f"keyless ingest {_on(gpt.keyless_ingest)} -> {_on(keyless)}")
    if not changes:
        return f"GPT {gpt.gpt_id} unchanged ({described})"
    await gpts.update(conn, gpt.gpt_id, new_name, keyless)
    return f"GPT {gpt.gpt_id} updated: {', '.join(changes)}"


def cmd_gpts_list(args: argparse.Namespace) -> int:
    from chatbeto.store import gpts

    rows = _run(_with_pool(gpts.list_all))
    print("id\tname\tproject\tkeyless_ingest\tcreated")
    for g in rows:
        project = "all (built in)" if g.builtin else str(g.project_id)
        print(
            f"{g.gpt_id}\t{g.name}\t{project}\t{_on(g.keyless_ingest)}\t"
            f"{g.created_at:%Y-%m-%d %H:%M}"
        )
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chatbeto", description="chatbeto gateway and workers")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser(
        "migrate",
        help="create the database if missing, apply migrations, declare the broker topology",
    ).set_defaults(func=cmd_migrate)
    run = sub.add_parser("run", help="run one service in the foreground")
    run.add_argument("service", choices=sorted(SERVICES), help="the service to run")
    run.set_defaults(func=cmd_run)
    sub.add_parser(
        "dev", help="run every service (and the OpenAI stub without a key) in one terminal"
    ).set_defaults(func=cmd_dev)

    projects = sub.add_parser("projects", help="create and list projects").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    pc = projects.add_parser("create", help="create a project; prints its id on the last line")
    pc.add_argument("name", metavar="NAME", help="a unique name (1-200 characters)")
    pc.set_defaults(func=cmd_projects_create)
    projects.add_parser("list", help="id, name and creation time of every project").set_defaults(
        func=cmd_projects_list
    )

    keys = sub.add_parser("keys", help="create, list and revoke API keys").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    kc = keys.add_parser("create", help="create a key; prints it (once) on the last line")
    who = kc.add_mutually_exclusive_group(required=True)
    who.add_argument("--admin", action="store_true", help="a key for every project and admin")
    who.add_argument("--project", type=int, metavar="ID", help="a key bound to this project")
    kc.add_argument("--name", help="a label to recognise the key by in `keys list`")
    kc.add_argument("--rate-limit", help="e.g. 50/15m (overrides RATE_LIMIT for this key)")
    kc.add_argument("--budget", help="USD per window, e.g. 20/1mo (calendar month) or 5/1d")
    kc.add_argument("--tpm", type=_positive_int, help="tokens per minute")
    kc.set_defaults(func=cmd_keys_create)
    keys.add_parser(
        "list", help="prefix, name, project, limit and last use of every key"
    ).set_defaults(func=cmd_keys_list)
    kr = keys.add_parser("revoke", help="revoke a key (refused on every gateway within 5 s)")
    kr.add_argument("key", metavar="KEY_OR_PREFIX", help="the key, or its prefix from `keys list`")
    kr.set_defaults(func=cmd_keys_revoke)

    gpts = sub.add_parser("gpts", help="register and list GPTs for metrics").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    ga = gpts.add_parser(
        "add",
        help="register a GPT (refuses a taken id unless --update)",
        description="Registers a GPT for metrics. An id that is already registered is refused "
        "unless --update is given; then only the options given change, and the changes are "
        "printed.",
    )
    ga.add_argument(
        "gpt_id", metavar="GPT_ID", help="1-128 of A-Z a-z 0-9 _ . : -, as its clients send it"
    )
    ga.add_argument("--name", help="display name (required for a new GPT)")
    ga.add_argument(
        "--project", type=int, metavar="ID", help="its project (required for a new GPT)"
    )
    ga.add_argument(
        "--keyless-ingest",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="accept sessions and events without a key (default for a new GPT: off)",
    )
    ga.add_argument(
        "--update", action="store_true", help="change an existing GPT instead of refusing"
    )
    ga.set_defaults(func=cmd_gpts_add)
    gpts.add_parser(
        "list", help="every registered GPT, its project and keyless ingest"
    ).set_defaults(func=cmd_gpts_list)

    for name in PLUGINS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                continue  # that feature is not built yet
            raise
        module.register(sub)
    return p


def _debug() -> bool:
    return setting("LOG_LEVEL", "info").lower() == "debug"


def main(argv: list[str] | None = None) -> int:
    """The entry of every command and service: an expected failure is one line on stderr."""
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        line = explain(exc, getattr(args, "service", None))
        if line is None:
            raise  # not an expected failure: its traceback is the report
        if _debug():
            traceback.print_exception(exc)
        print(f"chatbeto: {line}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    return code


if __name__ == "__main__":
    sys.exit(main())
