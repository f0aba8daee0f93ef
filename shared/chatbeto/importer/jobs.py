"""Moved to `chatbeto.store.jobs`; this name stays until the gateway imports the store."""

from __future__ import annotations

import uuid
from dataclasses import asdict
from typing import Any

import orjson

from chatbeto.store import jobs
from chatbeto.store.jobs import Db, add_chunk, create_upload
from chatbeto.store.jobs import discard_upload as discard
from chatbeto.store.jobs import queue_import as queue_job

__all__ = ["add_chunk", "create_upload", "discard", "get_job", "queue_job"]


async def get_job(conn: Db, job_id: uuid.UUID) -> dict[str, Any] | None:
    """The import job as the gateway reads it today (`errors` as JSON text)."""
    job = await jobs.get(conn, job_id, jobs.IMPORT)
    return None if job is None else {**asdict(job), "errors": orjson.dumps(job.errors).decode()}
