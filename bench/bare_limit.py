"""The bare-HTTP limit of single-event ingestion: what aiohttp + pydantic alone can do here.

An aiohttp handler of the same shape as `POST /api/events` — read the body, validate it with the
gateway's own `EventIn` model, answer 202 `{"id"}` with orjson — and nothing else: no key, no
rate limit, no broker, no middleware. `bench ingest` runs it beside chatbeto in the same run, so
the ratio between the two says how much of the machine the gateway's own work costs.

`python -m bench.bare_limit --port N [--workers K]`: K processes sharing the port
(SO_REUSEPORT), as `GATEWAY_WORKERS` runs the gateway.
"""

from __future__ import annotations

import argparse
import multiprocessing
import signal
import uuid

import orjson
from aiohttp import web
from chatbeto_gateway.metrics.schemas import EventIn
from pydantic import ValidationError


async def create_event(request: web.Request) -> web.Response:
    try:
        event = EventIn.model_validate_json(await request.read())
    except ValidationError:
        return web.Response(status=422)
    body = orjson.dumps({"id": str(event.id or uuid.uuid4())})
    return web.Response(body=body, status=202, content_type="application/json")


async def healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


def serve(port: int) -> None:
    import uvloop

    uvloop.install()
    app = web.Application()
    app.router.add_post("/api/events", create_event)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, reuse_port=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_limit")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    if args.workers == 1:
        serve(args.port)
        return
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=serve, args=(args.port,)) for _ in range(args.workers)]
    for proc in procs:
        proc.start()

    def stop(*_: object) -> None:
        for proc in procs:
            if proc.pid is not None:
                proc.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for proc in procs:
        proc.join()


if __name__ == "__main__":
    main()
