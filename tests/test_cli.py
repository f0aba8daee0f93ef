"""The CLI as a user meets it: run as a process, every expected failure one line on stderr
naming what to fix, no traceback; `gpts`, `projects`, `webhook send` behaviours."""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiohttp import web
from chatbeto import signatures
from chatbeto.db import with_database
from chatbeto_tools.cli import parser
from pytest_aiohttp import AiohttpServer

from tests.conftest import Client, Factory

CHATBETO = str(Path(sys.executable).with_name("chatbeto"))
# Each failure path waits out its bounded retry (Postgres ~5 s, RabbitMQ 10 tries in migrate).
RUN_TIMEOUT_SECONDS = 120


async def chatbeto(
    *argv: str, env: dict[str, str], cwd: Path | None = None, stdin: bytes | None = None
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        CHATBETO,
        *argv,
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), RUN_TIMEOUT_SECONDS)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def one_line_failure(code: int, err: str, *needles: str) -> str:
    """The last stderr line names what to fix; no traceback anywhere."""
    assert code != 0, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("chatbeto: "), err
    for needle in needles:
        assert needle in last, last
    return last


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def with_netloc(url: str, netloc: str, path: str | None = None) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=netloc, path=parts.path if path is None else path))


# --- start-up failures ---------------------------------------------------------------------


async def test_postgres_refusing_names_database_url(env: dict[str, str]) -> None:
    env["DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:{closed_port()}/chatbeto"
    code, _, err = await chatbeto("projects", "list", env=env)
    one_line_failure(code, err, "DATABASE_URL", "connection refused")


async def test_missing_database_says_to_run_migrate(env: dict[str, str]) -> None:
    env["DATABASE_URL"] = with_database(env["DATABASE_URL"], "cbt_does_not_exist")
    env["GATEWAY_PORT"] = "0"
    code, _, err = await chatbeto("run", "gateway", env=env)
    one_line_failure(code, err, "DATABASE_URL", "cbt_does_not_exist", "chatbeto migrate")


async def test_unmigrated_database_says_to_run_migrate(
    env: dict[str, str], pg_base_url: str
) -> None:
    name = "cbt_empty_" + env["AMQP_NAMESPACE"].strip(".")
    admin = await asyncpg.connect(with_database(pg_base_url, "postgres"))
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        env["DATABASE_URL"] = with_database(pg_base_url, name)
        code, _, err = await chatbeto("gpts", "list", env=env)
        one_line_failure(code, err, "DATABASE_URL", "chatbeto migrate")
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_postgres_refusing_credentials_names_database_url(env: dict[str, str]) -> None:
    parts = urlsplit(env["DATABASE_URL"])
    env["DATABASE_URL"] = with_netloc(
        env["DATABASE_URL"], f"no_such_role_x:pw@{parts.hostname}:{parts.port or 5432}"
    )
    code, _, err = await chatbeto("projects", "list", env=env)
    line = one_line_failure(code, err, "DATABASE_URL", "credentials")
    assert ":pw@" not in line  # the password is masked


async def test_missing_vhost_names_amqp_url(env: dict[str, str]) -> None:
    env["AMQP_URL"] = with_netloc(
        env["AMQP_URL"], urlsplit(env["AMQP_URL"]).netloc, "/cbt-no-such-vhost"
    )
    code, _, err = await chatbeto("migrate", env=env)
    one_line_failure(code, err, "AMQP_URL", "cbt-no-such-vhost")
    assert "retrying" not in err  # a refusal is final: no retries before the one line


async def test_refused_broker_credentials_name_amqp_url(env: dict[str, str]) -> None:
    parts = urlsplit(env["AMQP_URL"])
    env["AMQP_URL"] = with_netloc(
        env["AMQP_URL"], f"guest:wrong-password@{parts.hostname}:{parts.port or 5672}"
    )
    code, _, err = await chatbeto("migrate", env=env)
    line = one_line_failure(code, err, "AMQP_URL", "credentials")
    assert "wrong-password" not in line
    assert "retrying" not in err


async def test_unreachable_broker_names_amqp_url(env: dict[str, str]) -> None:
    env["AMQP_URL"] = f"amqp://guest:guest@127.0.0.1:{closed_port()}/"
    code, _, err = await chatbeto("migrate", env=env)
    one_line_failure(code, err, "AMQP_URL", "cannot reach RabbitMQ")


async def test_debug_level_shows_the_traceback_too(env: dict[str, str]) -> None:
    env["DATABASE_URL"] = with_database(env["DATABASE_URL"], "cbt_does_not_exist")
    env["LOG_LEVEL"] = "debug"
    code, _, err = await chatbeto("projects", "list", env=env)
    assert code == 1
    assert "Traceback" in err
    assert "chatbeto migrate" in err.strip().splitlines()[-1]


async def test_bad_setting_names_the_variable(env: dict[str, str]) -> None:
    env["LOG_FORMAT"] = "xml"
    code, _, err = await chatbeto("projects", "list", env=env)
    assert code == 2
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("configuration error: LOG_FORMAT")


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "   ", "x" * 201])
async def test_projects_create_refuses_a_bad_name(env: dict[str, str], name: str) -> None:
    code, _, err = await chatbeto("projects", "create", name, env=env)
    assert code == 2
    one_line_failure(code, err, "NAME")


async def test_projects_names_are_unique_in_cli_and_api(
    env: dict[str, str], gateway: Client, factory: Factory, db: asyncpg.Connection
) -> None:
    code, out, err = await chatbeto("projects", "create", "  Support Bot ", env=env)
    assert code == 0, err
    project_id = int(out.strip().splitlines()[-1])
    code, _, err = await chatbeto("projects", "create", "support bot", env=env)
    one_line_failure(code, err, "already exists", f"id {project_id}")

    admin = await factory.key(admin=True)
    resp = await gateway.post(
        "/api/v1/projects", json={"name": "SUPPORT BOT"}, headers={"X-API-Key": admin}
    )
    body = await resp.json()
    assert resp.status == 409, body
    assert body["error"]["code"] == "project_exists"
    assert body["error"]["details"] == {"id": project_id}
    resp = await gateway.post(
        "/api/v1/projects", json={"name": "   "}, headers={"X-API-Key": admin}
    )
    assert resp.status == 422
    assert (await resp.json())["error"]["details"][0]["field"] == "name"
    assert await db.fetchval("SELECT count(*) FROM projects WHERE lower(name) = 'support bot'") == 1

    code, out, _ = await chatbeto("projects", "list", env=env)
    assert code == 0
    assert f"{project_id}\tSupport Bot\t" in out


async def test_missing_file_is_one_line(env: dict[str, str]) -> None:
    code, _, err = await chatbeto(
        "webhook", "send", "--file", "/nope.json", "--event", "x", "--secret", "s", env=env
    )
    one_line_failure(code, err, "/nope.json", "No such file")
    code, _, err = await chatbeto("import", "/nope.zip", "--project", "1", env=env)
    assert code != 0
    assert "Traceback" not in err
    assert "/nope.zip" in err.strip().splitlines()[-1]


async def test_keys_create_for_a_missing_project(env: dict[str, str]) -> None:
    code, _, err = await chatbeto("keys", "create", "--project", "999999", env=env)
    one_line_failure(code, err, "project 999999 does not exist")


# --- gpts ------------------------------------------------------------------------------------


async def test_gpts_add_refuses_a_taken_id_unless_update(
    env: dict[str, str], factory: Factory, db: asyncpg.Connection
) -> None:
    project = await factory.project()
    other = await factory.project("other")
    args = ("gpts", "add", "devops-expert", "--project", str(project))
    code, out, err = await chatbeto(*args, "--name", "DevOps", "--keyless-ingest", env=env)
    assert code == 0, err
    assert "registered" in out

    code, _, err = await chatbeto(*args, "--name", "Dup", env=env)
    one_line_failure(code, err, "already exists", "--update")
    row = await db.fetchrow("SELECT name, keyless_ingest FROM gpts WHERE gpt_id = 'devops-expert'")
    assert row is not None
    assert (row["name"], row["keyless_ingest"]) == ("DevOps", True)  # untouched

    code, out, err = await chatbeto(*args, "--name", "Dup", "--update", env=env)
    assert code == 0, err
    assert "name 'DevOps' -> 'Dup'" in out
    assert "keyless" not in out  # not given: unchanged
    row = await db.fetchrow("SELECT name, keyless_ingest FROM gpts WHERE gpt_id = 'devops-expert'")
    assert row is not None
    assert (row["name"], row["keyless_ingest"]) == ("Dup", True)

    code, out, err = await chatbeto(
        "gpts", "add", "devops-expert", "--no-keyless-ingest", "--update", env=env
    )
    assert code == 0, err
    assert "keyless ingest on -> off" in out

    code, _, err = await chatbeto(
        "gpts", "add", "devops-expert", "--project", str(other), "--update", env=env
    )
    one_line_failure(code, err, f"belongs to project {project}")
    code, _, err = await chatbeto("gpts", "add", "chatbeto", "--name", "x", "--update", env=env)
    one_line_failure(code, err, "built in")

    code, out, err = await chatbeto("gpts", "list", env=env)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("id\tname\tproject")
    assert any(line.startswith(f"devops-expert\tDup\t{project}\toff\t") for line in lines)
    assert any(line.startswith("chatbeto\t") for line in lines)


@pytest.mark.parametrize("gpt_id", ["Bad GPT!", "x" * 129, "ümlaut"])
async def test_gpts_add_validates_ids_as_the_api_does(
    env: dict[str, str], factory: Factory, gpt_id: str
) -> None:
    from chatbeto_gateway.metrics.schemas import GptIn
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        GptIn(id=gpt_id, name="x")
    project = await factory.project()
    code, _, err = await chatbeto(
        "gpts", "add", gpt_id, "--name", "x", "--project", str(project), env=env
    )
    assert code == 2
    one_line_failure(code, err, "GPT_ID")


# --- webhook send reads .env -------------------------------------------------------------------


async def test_webhook_send_reads_secret_and_port_from_dotenv(
    env: dict[str, str], tmp_path: Path, aiohttp_server: AiohttpServer
) -> None:
    received: list[bool] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            signatures.verify_legacy(["dotenv-secret"], request.headers, body)
        except signatures.SignatureError:
            received.append(False)
            return web.Response(status=401)
        received.append(request.headers.get("X-Event-Type") == "conversation.created")
        return web.json_response({"ok": True}, status=202)

    app = web.Application()
    app.router.add_post("/webhook/chatgpt", hook)
    server = await aiohttp_server(app)
    (tmp_path / ".env").write_text(f"WEBHOOK_SECRET=dotenv-secret\nGATEWAY_PORT={server.port}\n")
    (tmp_path / "body.json").write_text('{"projectId": 1, "title": "t", "messages": []}')
    env.pop("WEBHOOK_SECRET", None)
    code, out, err = await chatbeto(
        "webhook", "send", "--event", "conversation.created", "--file", "body.json",
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith("202 ")
    assert received == [True]


# --- help ----------------------------------------------------------------------------------------


def _walk(p: argparse.ArgumentParser, path: str) -> list[str]:
    missing = []
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {c.dest: c.help for c in action._choices_actions}
            for name, child in action.choices.items():
                if not helps.get(name):
                    missing.append(f"{path} {name}")
                missing += _walk(child, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction) and not action.help:
            missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    return missing


def test_every_command_and_option_has_a_help_line() -> None:
    assert _walk(parser(), "chatbeto") == []
