"""ChatGPT export imports (contract 3.1): `POST /api/v1/imports`, `GET /api/v1/imports/{jobId}`.

Exports are far bigger than the 1 MiB body limit of every other route, so this handler reads the
multipart stream itself, with its own limit (`MAX_UPLOAD_BYTES`), and streams the file parts into
Postgres in chunks — never whole in memory — where any import worker can read it. The 202 comes
only after the job message is confirmed on the broker.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import asyncpg
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import BadHttpMessage
from chatbeto.logging import REQUEST_ID, get_logger
from chatbeto.messages import ImportJob, envelope, to_amqp
from chatbeto.store import jobs, projects
from pydantic import BaseModel, Field

from chatbeto_gateway.access.auth import Principal, principal_of
from chatbeto_gateway.http import responses
from chatbeto_gateway.http.errors import ApiError, ValidationFailed, not_found
from chatbeto_gateway.http.openapi import doc
from chatbeto_gateway.imports import upload as upload_io
from chatbeto_gateway.imports.upload import Bundle, Kind
from chatbeto_gateway.state import POOL, PUBLISHER

routes = web.RouteTableDef()
log = get_logger(__name__)
MAX_UPLOAD_BYTES = 512 * 1024 * 1024
CHUNK_BYTES = 1024 * 1024
MAX_FIELD_BYTES = 64
MAX_FILENAME_CHARS = 255
ROUTING_KEY = "import.job"


class ImportForm(BaseModel):
    """multipart/form-data fields of an import."""

    file: bytes = Field(
        description="The export .zip, or its JSON files (conversations.json, or "
        "conversations-NNN.json and export_manifest.json) as one or more file parts; "
        "other files are skipped; up to 512 MiB in all",
        json_schema_extra={"format": "binary", "type": "string"},
    )
    projectId: int | None = Field(
        default=None, description="Target project; a project key may omit it (its own project)"
    )


def too_large() -> ApiError:
    return ApiError(
        413, "payload_too_large", f"the upload is larger than {MAX_UPLOAD_BYTES >> 20} MiB"
    )


async def target_project(pool: asyncpg.Pool, principal: Principal, raw: str | None) -> int:
    """The project to import into; another project's id answers 404, as everywhere."""
    if raw is None or not raw.strip():
        if principal.project_id is None:
            raise ValidationFailed.of("projectId", "required with an admin key")
        return principal.project_id
    try:
        project_id = int(raw.strip())
    except ValueError as exc:
        raise ValidationFailed.of("projectId", "must be an integer") from exc
    if project_id <= 0 or project_id >= 2**63:
        raise ValidationFailed.of("projectId", "must be a positive integer")
    if not principal.can_see_project(project_id) or not await projects.exists(pool, project_id):
        raise not_found("project_not_found", "project not found")
    return project_id


def not_an_export() -> ApiError:
    return ValidationFailed.of(
        "file",
        "not a ChatGPT export (the export .zip, conversations.json, or its "
        "conversations-NNN.json and export_manifest.json files)",
    )


def zip_alone() -> ApiError:
    return ValidationFailed.of(
        "file", "send the export .zip alone, or its JSON files as several file parts"
    )


async def read_field(part: BodyPartReader) -> str:
    data = bytearray()
    while chunk := await part.read_chunk(MAX_FIELD_BYTES):
        data += chunk
        if len(data) > MAX_FIELD_BYTES:
            raise ValidationFailed.of(part.name or "field", "too long")
    return data.decode("utf-8", "replace")


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text.replace("\x00", "")[:200]


@dataclass
class Upload:
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    project_id: int | None = None
    size: int | None = None
    created: bool = False
    received: int = 0  # bytes of file parts, against MAX_UPLOAD_BYTES
    empty_parts: int = 0
    skipped_parts: int = 0

    def count(self, n: int) -> None:
        self.received += n
        if self.received > MAX_UPLOAD_BYTES:
            raise too_large()


async def store_part(
    pool: asyncpg.Pool, upload: Upload, bundle: Bundle | None, part: BodyPartReader
) -> Bundle | None:
    """One `file` part: the zip as it came, a JSON file into the bundle, anything else skipped."""
    kind, head = await upload_io.read_head(part, CHUNK_BYTES, upload.count)
    if kind is Kind.EMPTY:
        upload.empty_parts += 1
        return bundle
    if kind is Kind.OTHER:
        upload.skipped_parts += 1
        await upload_io.drain(part, CHUNK_BYTES, upload.count)
        return bundle
    if bundle is not None and (bundle.raw or kind is Kind.ZIP):
        raise zip_alone()
    if bundle is None:
        filename = (part.filename or "").replace("\x00", "")[:MAX_FILENAME_CHARS]
        await jobs.create_upload(pool, upload.id, filename or None)
        upload.created = True
        bundle = Bundle(upload_io.ChunkWriter(pool, upload.id, CHUNK_BYTES))
    if kind is Kind.ZIP:
        await upload_io.add_raw(bundle, part, head, CHUNK_BYTES, upload.count)
    else:
        try:
            await upload_io.add_member(bundle, part, kind, head, CHUNK_BYTES, upload.count)
        except ValueError as exc:  # two parts with one name
            raise ValidationFailed.of("file", str(exc)) from None
    return bundle


async def read_form(request: web.Request, principal: Principal, upload: Upload) -> None:
    """Read the multipart form in whatever order its parts come, storing the file parts."""
    pool = request.app[POOL]
    project_given = False
    bundle: Bundle | None = None
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue  # a nested multipart: not ours
            if part.name == "projectId":
                upload.project_id = await target_project(pool, principal, await read_field(part))
                project_given = True
            elif part.name == "file":
                bundle = await store_part(pool, upload, bundle, part)
            else:
                await part.release()
    except (AssertionError, ValueError, BadHttpMessage) as exc:
        # aiohttp's multipart reader signals a malformed body (and a bad part header, e.g. a
        # control character in it: InvalidHeader) this way.
        raise ApiError(400, "bad_request", f"malformed multipart body: {_short(exc)}") from exc
    if bundle is None:
        if upload.skipped_parts:
            raise not_an_export()
        if upload.empty_parts:
            raise ValidationFailed.of("file", "the file is empty")
        raise ValidationFailed.of("file", "a file field is required")
    await bundle.finish()
    upload.size = bundle.writer.size
    if not project_given:
        upload.project_id = await target_project(pool, principal, None)


@routes.post("/api/v1/imports")
@doc(
    summary="Import a ChatGPT data export (multipart upload, up to 512 MiB) as a background job",
    body=ImportForm,
    body_content_type="multipart/form-data",
    tags=("imports",),
    responses={
        202: "Queued: data.jobId",
        400: "Malformed multipart body",
        401: "",
        404: "Project not found (or another project's)",
        413: "Upload over 512 MiB",
        415: "Not multipart/form-data",
        422: "",
        503: "",
    },
)
async def create_import(request: web.Request) -> web.Response:
    principal = principal_of(request)
    if request.content_type != "multipart/form-data":
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data with a file field")
    if (request.content_length or 0) > MAX_UPLOAD_BYTES + CHUNK_BYTES:
        raise too_large()
    pool = request.app[POOL]
    upload = Upload()
    queued = False
    try:
        await read_form(request, principal, upload)
        assert upload.project_id is not None
        assert upload.size is not None
        await jobs.queue_import(pool, upload.id, upload.project_id, upload.size, REQUEST_ID.get())
        job = ImportJob(job_id=upload.id, project_id=upload.project_id)
        await request.app[PUBLISHER].publish(to_amqp(envelope(job)), ROUTING_KEY)
        queued = True
    finally:
        # Refused, failed or abandoned mid-upload: leave no chunks behind.
        if upload.created and not queued:
            await jobs.discard_upload(pool, upload.id)
    log.info(
        "import queued", job_id=str(upload.id), size_bytes=upload.size, project_id=upload.project_id
    )
    return responses.envelope({"jobId": str(upload.id)}, status=202)


@routes.get("/api/v1/imports/{jobId}")
@doc(
    summary="Progress of an import job",
    tags=("imports",),
    responses={
        200: "data: state, total, done, failed, failures [{title, id, reason}]",
        401: "",
        404: "",
    },
)
async def get_import(request: web.Request) -> web.Response:
    principal = principal_of(request)
    try:
        job_id = uuid.UUID(request.match_info["jobId"])
    except ValueError as exc:
        raise not_found("job_not_found", "import job not found") from exc
    job = await jobs.get(request.app[POOL], job_id, jobs.IMPORT)
    if job is None or not principal.can_see_project(job.project_id):
        raise not_found("job_not_found", "import job not found")
    return responses.envelope(
        {
            "jobId": str(job.id),
            "projectId": job.project_id,
            "state": job.state,
            "total": job.total,
            "done": job.done,
            "failed": job.failed,
            "failures": job.errors,
            "createdAt": job.created_at.isoformat(),
            "updatedAt": job.updated_at.isoformat(),
        }
    )
