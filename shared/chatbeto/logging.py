"""structlog, configured once per process: JSON by default, console for humans.

The standard library's loggers (aio-pika, aiormq, asyncio, aiohttp) go through structlog's
`ProcessorFormatter`, so their lines have the same shape as ours: JSON under LOG_FORMAT=json,
the console renderer under console.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar

import structlog

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# Libraries are chatty below warning (aiormq frames, asyncio debug); ours follow LOG_LEVEL.
LIBRARY_LEVEL = logging.WARNING


def _add_request_id(
    _logger: object, _name: str, event: structlog.types.EventDict
) -> structlog.types.EventDict:
    request_id = REQUEST_ID.get()
    if request_id is not None and "request_id" not in event:
        event["request_id"] = request_id
    return event


def _renderer(fmt: str) -> list[structlog.types.Processor]:
    if fmt == "console":
        return [structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
    return [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]


def configure(level: str = "info", fmt: str = "json", service: str | None = None) -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        _add_request_id,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, *_renderer(fmt)],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    if service:
        structlog.contextvars.bind_contextvars(service=service)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *_renderer(fmt),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(max(LIBRARY_LEVEL, LEVELS[level]))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
