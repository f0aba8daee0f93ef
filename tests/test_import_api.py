"""`POST /api/v1/imports` → broker → ImportWorker → `GET /api/v1/imports/{jobId}`, end to end."""

from __future__ import annotations

import asyncio
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aio_pika
import asyncpg
import orjson
import pytest
from aiohttp import FormData
from chatbeto.messages import ImportJob
from chatbeto.settings import GatewaySettings, WorkerSettings
from pytest_aiohttp import AiohttpClient

from tests.conftest import Client, Factory, wait_for
from tests.fixtures.chatgpt_builder import dumps, simple, split, zip_files, zipped
from tests.tcp_proxy import TcpProxy

if TYPE_CHECKING:
    from chatbeto_openai_worker.imports import ImportWorker

FIXTURE = Path(__file__).parent / "fixtures" / "chatgpt_export_small.json"
CHATBETO = str(Path(sys.executable).with_name("chatbeto"))
DOCKER_ID = "67a1f0c2-1111-8000-9a3e-0d1c2b3a4f01"


@pytest.fixture
async def importer(database: str, amqp_url: str, namespace: str) -> AsyncIterator[ImportWorker]:
    from chatbeto_openai_worker.imports import ImportWorker

    settings = WorkerSettings(
        _env_file=None,
        database_url=database,
        amqp_url=amqp_url,
        amqp_namespace=namespace,
    )
    worker = ImportWorker(settings)
    await worker.start()
    yield worker
    await worker.close()


def form(
    payload: bytes | None,
    project: int | None = None,
    *,
    filename: str = "conversations.json",
    file_first: bool = False,
) -> FormData:
    data = FormData(default_to_multipart=True)
    fields: list[tuple[str, Any, dict[str, str]]] = []
    if project is not None:
        fields.append(("projectId", str(project), {}))
    if payload is not None:
        file_field = ("file", payload, {"filename": filename, "content_type": "application/json"})
        fields.insert(0 if file_first else len(fields), file_field)
    for name, value, extra in fields:
        data.add_field(name, value, **extra)
    return data


async def job_state(db: asyncpg.Connection, job_id: str, *states: str) -> asyncpg.Record | None:
    row = await db.fetchrow("SELECT * FROM jobs WHERE id = $1::uuid", job_id)
    return row if row is not None and row["state"] in states else None


async def upload(gateway: Client, key: str, data: FormData, status: int = 202) -> Any:
    resp = await gateway.post("/api/v1/imports", data=data, headers={"X-API-Key": key})
    body = await resp.json()
    assert resp.status == status, body
    return body


async def test_upload_imports_in_the_background_and_reads_back_through_the_api(
    gateway: Client, importer: ImportWorker, factory: Factory, db: asyncpg.Connection
) -> None:
    project = await factory.project()
    key = await factory.key(project)
    body = await upload(gateway, key, form(FIXTURE.read_bytes(), project))
    assert body["status"] == "success"
    job_id = body["data"]["jobId"]
    await wait_for(lambda: job_state(db, job_id, "done"))
    resp = await gateway.get(f"/api/v1/imports/{job_id}", headers={"X-API-Key": key})
    assert resp.status == 200
    job = (await resp.json())["data"]
    assert job["state"] == "done"
    assert (job["total"], job["done"], job["failed"], job["failures"]) == (3, 3, 0, [])
    # The chunks are gone once the job is finished.
    assert await db.fetchval("SELECT count(*) FROM import_chunks") == 0
    # The round trip: the conversation reads back as exactly the branch the ChatGPT user saw.
    conv_id = await db.fetchval(
        "SELECT id FROM conversations WHERE external_id = $1 AND project_id = $2",
        DOCKER_ID,
        project,
    )
    resp = await gateway.get(f"/api/v1/openai/conversations/{conv_id}", headers={"X-API-Key": key})
    assert resp.status == 200, await resp.text()
    data = (await resp.json())["data"]
    assert data["conversation"]["title"] == "Deploying with Docker"
    assert [(m["role"], m["content"]) for m in data["messages"]] == [
        ("user", "How do I deploy an aiohttp app with Docker?"),
        ("assistant", "Use python:3.12-slim, copy the app, run gunicorn with aiohttp's worker."),
        ("user", "And how do I add Postgres with docker compose?"),
        (
            "assistant",
            "Add a `db` service using the postgres:16 image and point DATABASE_URL at it.",
        ),
    ]


async def test_zip_over_one_mib_with_the_file_before_the_project(
    gateway: Client, importer: ImportWorker, factory: Factory, db: asyncpg.Connection
) -> None:
    project = await factory.project()
    admin = await factory.key(admin=True)
    items = [simple(f"chat {n}", turns=4) for n in range(300)]
    payload = dumps(items)
    assert len(payload) > 1024 * 1024  # over the 1 MiB limit of every other route
    stored = zipped(payload)
    body = await upload(
        gateway, admin, form(stored, project, filename="export.zip", file_first=True)
    )
    job_id = body["data"]["jobId"]
    row = await wait_for(lambda: job_state(db, job_id, "done"))
    assert (row["total"], row["done"], row["failed"]) == (300, 300, 0)
    assert await db.fetchval("SELECT count(*) FROM messages") == 300 * 8


async def test_malformed_conversation_is_listed_in_the_job(
    gateway: Client, importer: ImportWorker, factory: Factory, db: asyncpg.Connection
) -> None:
    project = await factory.project()
    key = await factory.key(project)
    broken = simple("broken").to_dict()
    broken["mapping"] = None
    body = await upload(gateway, key, form(dumps([simple("fine"), broken])))
    job_id = body["data"]["jobId"]
    await wait_for(lambda: job_state(db, job_id, "done"))
    resp = await gateway.get(
        f"/api/v1/imports/{job_id}", headers={"Authorization": f"Bearer {key}"}
    )
    job = (await resp.json())["data"]
    assert (job["total"], job["done"], job["failed"]) == (2, 1, 1)
    assert job["failures"] == [
        {"title": "broken", "id": broken["id"], "reason": "mapping is missing or empty"}
    ]


async def test_truncated_upload_fails_the_job_with_a_reason(
    gateway: Client, importer: ImportWorker, factory: Factory, db: asyncpg.Connection
) -> None:
    project = await factory.project()
    key = await factory.key(project)
    body = await upload(gateway, key, form(FIXTURE.read_bytes()[:4000]))
    job_id = body["data"]["jobId"]
    await wait_for(lambda: job_state(db, job_id, "failed"))
    resp = await gateway.get(f"/api/v1/imports/{job_id}", headers={"X-API-Key": key})
    job = (await resp.json())["data"]
    assert job["state"] == "failed"
    assert "truncated" in job["failures"][0]["reason"]
    assert await db.fetchval("SELECT count(*) FROM conversations") == 0
    assert await db.fetchval("SELECT count(*) FROM import_uploads") == 0


async def test_a_job_delivered_twice_runs_once(
    gateway: Client, importer: ImportWorker, factory: Factory, db: asyncpg.Connection
) -> None:
    project = await factory.project()
    key = await factory.key(project)
    body = await upload(gateway, key, form(FIXTURE.read_bytes()))
    job_id = body["data"]["jobId"]
    done = await wait_for(lambda: job_state(db, job_id, "done"))
    await importer.run_job(ImportJob(job_id=uuid.UUID(job_id), project_id=project))
    again = await db.fetchrow("SELECT * FROM jobs WHERE id = $1::uuid", job_id)
    assert again == done
    assert await db.fetchval("SELECT count(*) FROM messages") == 15


async def test_a_job_interrupted_midway_resumes_without_duplicates(
    gateway: Client, importer: ImportWorker, factory: Factory, db: asyncpg.Connection, database: str
) -> None:
    from chatbeto.importer.run import import_file

    project = await factory.project()
    key = await factory.key(project)
    body = await upload(gateway, key, form(FIXTURE.read_bytes()))
    job_id = body["data"]["jobId"]
    await wait_for(lambda: job_state(db, job_id, "done"))
    # As if a worker died mid-job: part of it stored, the job still 'running', chunks kept.
    await db.execute("DELETE FROM conversations WHERE external_id = $1", DOCKER_ID)
    await db.execute("UPDATE jobs SET state = 'running' WHERE id = $1::uuid", job_id)
    await db.execute(
        "INSERT INTO import_uploads (id, project_id) VALUES ($1::uuid, $2)", job_id, project
    )
    await db.execute(
        "INSERT INTO import_chunks (upload_id, seq, data) VALUES ($1::uuid, 0, $2)",
        job_id,
        FIXTURE.read_bytes(),
    )
    await importer.run_job(ImportJob(job_id=uuid.UUID(job_id), project_id=project))
    row = await db.fetchrow("SELECT * FROM jobs WHERE id = $1::uuid", job_id)
    assert row is not None
    assert (row["state"], row["total"], row["done"]) == ("done", 3, 3)
    assert await db.fetchval("SELECT count(*) FROM messages") == 15
    assert (await import_file(database, FIXTURE, project)).messages == 0


async def test_project_key_can_only_import_into_its_own_project(
    gateway: Client, factory: Factory, db: asyncpg.Connection
) -> None:
    mine, other = await factory.project("mine"), await factory.project("other")
    key = await factory.key(mine)
    body = await upload(gateway, key, form(FIXTURE.read_bytes(), other), status=404)
    assert body == {
        "status": "error",
        "error": {"code": "project_not_found", "message": "project not found"},
    }
    await upload(gateway, key, form(FIXTURE.read_bytes(), other, file_first=True), status=404)
    await upload(gateway, key, form(FIXTURE.read_bytes(), 987654), status=404)
    assert await db.fetchval("SELECT count(*) FROM jobs") == 0
    assert await db.fetchval("SELECT count(*) FROM import_uploads") == 0


async def test_job_of_another_project_is_not_found(
    gateway: Client, factory: Factory, db: asyncpg.Connection
) -> None:
    mine, other = await factory.project("mine"), await factory.project("other")
    other_key, key = await factory.key(other), await factory.key(mine)
    job_id = (await upload(gateway, other_key, form(FIXTURE.read_bytes())))["data"]["jobId"]
    for path in (
        f"/api/v1/imports/{job_id}",
        f"/api/v1/imports/{uuid.uuid4()}",
        "/api/v1/imports/x",
    ):
        resp = await gateway.get(path, headers={"X-API-Key": key})
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "job_not_found"
    resp = await gateway.get(f"/api/v1/imports/{job_id}")
    assert resp.status == 401


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        (lambda p: form(None, p), "file", "a file field is required"),
        (lambda p: form(b"", p), "file", "the file is empty"),
        (lambda p: form(b"<html>nope</html>", p), "file", "not a ChatGPT export"),
        (lambda p: form(b"  \n\t  ", p), "file", "not a ChatGPT export"),
        (lambda p: form(b"PK", p), "file", "not a ChatGPT export"),
        (lambda p: form(FIXTURE.read_bytes(), None), "projectId", "required with an admin key"),
        (lambda p: form(FIXTURE.read_bytes(), "abc"), "projectId", "must be an integer"),  # type: ignore[arg-type]
    ],
)
async def test_bad_uploads_are_422_naming_the_field(
    gateway: Client, factory: Factory, db: asyncpg.Connection, data: Any, field: str, message: str
) -> None:
    project = await factory.project()
    admin = await factory.key(admin=True)
    body = await upload(gateway, admin, data(project), status=422)
    assert body["error"]["code"] == "validation_error"
    details = body["error"]["details"]
    assert [d["field"] for d in details] == [field]
    assert message in details[0]["message"]
    assert await db.fetchval("SELECT count(*) FROM import_uploads") == 0


async def test_not_multipart_is_415_and_no_key_is_401(gateway: Client, factory: Factory) -> None:
    key = await factory.key(await factory.project())
    resp = await gateway.post("/api/v1/imports", json={"file": "x"}, headers={"X-API-Key": key})
    assert resp.status == 415
    assert (await resp.json())["error"]["code"] == "unsupported_media_type"
    resp = await gateway.post("/api/v1/imports", data=form(FIXTURE.read_bytes()))
    assert resp.status == 401


async def test_upload_over_the_limit_is_413_and_leaves_nothing(
    gateway: Client, factory: Factory, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chatbeto_gateway.imports import routes as imports_api

    monkeypatch.setattr(imports_api, "MAX_UPLOAD_BYTES", 10_000)
    monkeypatch.setattr(imports_api, "CHUNK_BYTES", 4096)
    key = await factory.key(await factory.project())
    payload = dumps([simple(f"c{n}") for n in range(100)])
    assert len(payload) > 3 * (10_000 + 4096)
    # Announced too big: refused before reading. Chunked (no length): refused while streaming.
    body = await upload(gateway, key, form(payload), status=413)
    assert body["error"] == {
        "code": "payload_too_large",
        "message": "the upload is larger than 0 MiB",
    }

    writer = form(payload)()
    resp = await gateway.post(
        "/api/v1/imports",
        data=_stream(writer),
        headers={"X-API-Key": key, "Content-Type": writer.content_type},
    )
    assert resp.status == 413
    assert await db.fetchval("SELECT count(*) FROM import_uploads") == 0
    assert await db.fetchval("SELECT count(*) FROM import_chunks") == 0


async def _stream(writer: Any, piece: int = 4096) -> AsyncIterator[bytes]:
    import io

    buffer = io.BytesIO()

    class Sink:
        async def write(self, data: bytes) -> None:
            buffer.write(data)

    await writer.write(Sink())
    data = buffer.getvalue()
    for start in range(0, len(data), piece):
        yield data[start : start + piece]


async def test_broker_outage_is_503_and_leaves_nothing(
    aiohttp_client: AiohttpClient,
    database: str,
    amqp_url: str,
    namespace: str,
    factory: Factory,
    db: asyncpg.Connection,
) -> None:
    from chatbeto_gateway.app import create_app

    parts = urlsplit(amqp_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    await proxy.start()
    proxied = f"amqp://{parts.username}:{parts.password}@127.0.0.1:{proxy.port}{parts.path or '/'}"
    settings = GatewaySettings(
        _env_file=None,
        database_url=database,
        amqp_url=proxied,
        amqp_namespace=namespace,
    )
    gateway = await aiohttp_client(create_app(settings))
    key = await factory.key(await factory.project())
    await upload(gateway, key, form(FIXTURE.read_bytes()))
    await proxy.stop()
    body = await upload(gateway, key, form(FIXTURE.read_bytes()), status=503)
    assert body["error"]["code"] == "broker_unavailable"
    assert await db.fetchval("SELECT count(*) FROM jobs") == 1
    assert await db.fetchval("SELECT count(*) FROM import_uploads") == 1


async def test_openai_worker_process_runs_imports(
    gateway: Client, env: dict[str, str], factory: Factory, db: asyncpg.Connection
) -> None:
    """`chatbeto run openai-worker` carries the import worker, as deployed."""
    project = await factory.project()
    key = await factory.key(project)
    body = await upload(gateway, key, form(FIXTURE.read_bytes()))
    proc = await asyncio.create_subprocess_exec(
        CHATBETO,
        "run",
        "openai-worker",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_for(lambda: job_state(db, body["data"]["jobId"], "done"), timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert await db.fetchval("SELECT count(*) FROM messages") == 15


async def test_a_job_that_keeps_failing_is_dead_lettered_and_marked_failed(
    gateway: Client,
    database: str,
    amqp_url: str,
    namespace: str,
    factory: Factory,
    db: asyncpg.Connection,
) -> None:
    from chatbeto_openai_worker.imports import ImportWorker

    project = await factory.project()
    key = await factory.key(project)
    body = await upload(gateway, key, form(FIXTURE.read_bytes()))
    job_id = body["data"]["jobId"]
    # The worker's read of the upload fails every time (as if that table were unreachable).
    await db.execute("ALTER TABLE import_chunks RENAME TO import_chunks_gone")
    settings = WorkerSettings(
        _env_file=None,
        database_url=database,
        amqp_url=amqp_url,
        amqp_namespace=namespace,
    )
    worker = ImportWorker(settings, max_tries=1)
    await worker.start()
    try:
        row = await wait_for(lambda: job_state(db, job_id, "failed"))
    finally:
        await worker.close()
    assert "gave up after 1 tries: UndefinedTableError" in orjson.loads(row["errors"])[0]["reason"]
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        dlq = await channel.get_queue(f"{namespace}imports.dlq", ensure=False)
        message = await wait_for(lambda: dlq.get(fail=False))
        assert message is not None
        assert orjson.loads(message.body)["data"]["job_id"] == job_id
        await message.ack()


@pytest.mark.parametrize(
    ("content_type", "payload"),
    [
        ("multipart/form-data", b"--x\r\n\r\n"),
        ("multipart/form-data; boundary=abc", b"not a multipart body at all"),
        ("multipart/form-data; boundary=abc", b"--abc\r\nContent-Disposition: form-data\r\n"),
    ],
)
async def test_malformed_multipart_is_400(
    gateway: Client, factory: Factory, db: asyncpg.Connection, content_type: str, payload: bytes
) -> None:
    key = await factory.key(await factory.project())
    resp = await gateway.post(
        "/api/v1/imports",
        data=payload,
        headers={"X-API-Key": key, "Content-Type": content_type},
    )
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["error"]["code"] == "bad_request"
    assert await db.fetchval("SELECT count(*) FROM import_uploads") == 0


async def test_upload_abandoned_midway_leaves_nothing(
    gateway: Client, factory: Factory, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chatbeto_gateway.imports import routes as imports_api

    monkeypatch.setattr(imports_api, "CHUNK_BYTES", 4096)
    key = await factory.key(await factory.project())
    payload = dumps([simple(f"c{n}") for n in range(100)])
    head = (
        b"--abc\r\nContent-Disposition: form-data; name=file; filename=conversations.json\r\n"
        b"Content-Type: application/json\r\n\r\n"
    )
    _, writer = await asyncio.open_connection(gateway.server.host, gateway.server.port)
    writer.write(
        b"POST /api/v1/imports HTTP/1.1\r\nHost: x\r\n"
        + f"X-API-Key: {key}\r\n".encode()
        + b"Content-Type: multipart/form-data; boundary=abc\r\n"
        + f"Content-Length: {len(head) + len(payload) + 100}\r\n\r\n".encode()
        + head
        + payload[: len(payload) // 2]
    )
    await writer.drain()
    # Some chunks reached Postgres; then the client goes away.
    await wait_for(lambda: db.fetchval("SELECT count(*) FROM import_chunks"))
    writer.transport.abort()
    await wait_for(lambda: _none_left(db))
    assert await db.fetchval("SELECT count(*) FROM jobs") == 0


async def _none_left(db: asyncpg.Connection) -> bool:
    return await db.fetchval("SELECT count(*) FROM import_uploads") == 0


async def test_leading_whitespace_in_small_pieces_is_still_an_export(
    gateway: Client, importer: ImportWorker, factory: Factory, db: asyncpg.Connection
) -> None:
    project = await factory.project()
    key = await factory.key(project)
    writer = form(b" \n" * 1500 + FIXTURE.read_bytes())()
    resp = await gateway.post(
        "/api/v1/imports",
        data=_stream(writer, piece=7),
        headers={"X-API-Key": key, "Content-Type": writer.content_type},
    )
    assert resp.status == 202, await resp.text()
    job_id = (await resp.json())["data"]["jobId"]
    row = await wait_for(lambda: job_state(db, job_id, "done"))
    assert (row["total"], row["done"]) == (3, 3)


@pytest.mark.parametrize(
    "header",
    [
        b'Content-Disposition: form-data; name="file\x01"; filename="c.json"',
        b'Content-Disposition: form-data; name="file"; filename="c.json"\r\nX-Bad: a\x7fb',
        b'Content-Disposition: form-data; name="file"\r\nBad Header\x00: x',
    ],
)
async def test_control_character_in_a_part_header_is_a_400(
    gateway: Client, factory: Factory, db: asyncpg.Connection, header: bytes
) -> None:
    project = await factory.project()
    key = await factory.key(project)
    body = b"--b0undary\r\n" + header + b"\r\n\r\n[]\r\n--b0undary--\r\n"
    resp = await gateway.post(
        "/api/v1/imports",
        data=body,
        headers={"X-API-Key": key, "Content-Type": "multipart/form-data; boundary=b0undary"},
    )
    answer = await resp.json()
    assert resp.status in (400, 422), answer
    assert answer["status"] == "error"
    assert await db.fetchval("SELECT count(*) FROM import_uploads") == 0


async def test_split_export_zip_over_http_counts_every_part_and_reimports_nothing(
    gateway: Client, importer: ImportWorker, factory: Factory, db: asyncpg.Connection
) -> None:
    project = await factory.project()
    key = await factory.key(project)
    chats = [simple(f"chat {n}", turns=2) for n in range(25)]
    stored = zip_files(split(chats, 10))  # conversations-000..002.json + export_manifest.json
    for _ in range(2):  # the second time: everything is already there
        body = await upload(gateway, key, form(stored, project, filename="export.zip"))
        job_id = body["data"]["jobId"]
        row = await wait_for(partial(job_state, db, job_id, "done", "failed"))
        assert (row["state"], row["total"], row["done"], row["failed"]) == ("done", 25, 25, 0)
        assert await db.fetchval("SELECT count(*) FROM messages") == 25 * 4
    assert await db.fetchval("SELECT count(*) FROM conversations") == 25


def folder_form(files: dict[str, bytes], project: int | None = None) -> FormData:
    """An unpacked export as a browser's folder picker sends it: one `file` part per file."""
    data = FormData(default_to_multipart=True)
    if project is not None:
        data.add_field("projectId", str(project))
    for name, payload in files.items():
        data.add_field("file", payload, filename=f"chatgpt-export/{name}")
    return data


async def test_unpacked_split_export_as_several_file_parts(
    gateway: Client, importer: ImportWorker, factory: Factory, db: asyncpg.Connection
) -> None:
    project = await factory.project()
    key = await factory.key(project)
    chats = [simple(f"chat {n}", turns=1) for n in range(12)]
    files = split(chats, 5)  # conversations-000..002.json, export_manifest.json, user.json
    files["chat.html"] = b"<html><body>your chats</body></html>"
    files["file-def456-photo.png"] = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    body = await upload(gateway, key, folder_form(files, project))
    row = await wait_for(lambda: job_state(db, body["data"]["jobId"], "done", "failed"))
    assert (row["state"], row["total"], row["done"], row["failed"]) == ("done", 12, 12, 0)
    assert await db.fetchval("SELECT count(*) FROM messages") == 24
    # The same export again, unpacked or zipped: nothing new.
    for again in (folder_form(files, project), form(zip_files(files), project)):
        body = await upload(gateway, key, again)
        job_id = body["data"]["jobId"]
        row = await wait_for(partial(job_state, db, job_id, "done", "failed"))
        assert (row["state"], row["total"], row["done"]) == ("done", 12, 12)
    assert await db.fetchval("SELECT count(*) FROM conversations") == 12
    assert await db.fetchval("SELECT count(*) FROM messages") == 24
    assert await db.fetchval("SELECT count(*) FROM import_chunks") == 0


async def test_one_json_file_under_any_name_imports(
    gateway: Client, importer: ImportWorker, factory: Factory, db: asyncpg.Connection
) -> None:
    project = await factory.project()
    key = await factory.key(project)
    body = await upload(gateway, key, form(FIXTURE.read_bytes(), project, filename="my.json"))
    row = await wait_for(lambda: job_state(db, body["data"]["jobId"], "done", "failed"))
    assert (row["state"], row["total"], row["done"]) == ("done", 3, 3)


async def test_a_part_the_manifest_names_but_the_upload_lacks_fails_the_job(
    gateway: Client, importer: ImportWorker, factory: Factory, db: asyncpg.Connection
) -> None:
    project = await factory.project()
    key = await factory.key(project)
    files = split([simple("a"), simple("b")], 1)
    del files["conversations-001.json"]
    body = await upload(gateway, key, folder_form(files, project))
    row = await wait_for(lambda: job_state(db, body["data"]["jobId"], "failed"))
    reason = orjson.loads(row["errors"])[0]["reason"]
    assert "incomplete" in reason and "conversations-001.json" in reason
    assert await db.fetchval("SELECT count(*) FROM conversations") == 0


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"export.zip": zip_files(split([simple("a")], 1)), "user.json": b"[]"}, "alone"),
        ({"conversations.json": b"[]", "export.zip": zipped(b"[]")}, "alone"),
        ({"user.json": b'{"id": "u"}', "chat.html": b"<html></html>"}, "not a ChatGPT export"),
        ({"a/conversations-000.json": b"[]", "b/conversations-000.json": b"[]"}, "two file"),
    ],
)
async def test_bad_file_part_combinations_are_422(
    gateway: Client, factory: Factory, db: asyncpg.Connection, files: dict[str, bytes], message: str
) -> None:
    project = await factory.project()
    key = await factory.key(project)
    body = await upload(gateway, key, folder_form(files, project), status=422)
    assert body["error"]["details"][0]["field"] == "file"
    assert message in body["error"]["details"][0]["message"]
    assert await db.fetchval("SELECT count(*) FROM import_uploads") == 0
    assert await db.fetchval("SELECT count(*) FROM import_chunks") == 0
