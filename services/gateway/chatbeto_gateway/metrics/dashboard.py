"""`GET /dashboard`: the metrics dashboard, static files shipped inside the package.

No build step and no CDN (users run this offline): plain HTML/JS/CSS and a vendored charting
library under `static/`. The page reads the API with the key the user typed, sent as a header.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from chatbeto_gateway.http.openapi import doc

routes = web.RouteTableDef()
STATIC_DIR = Path(__file__).with_name("static")
CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".txt": "text/plain",
}
# Everything the page loads comes from the gateway itself; the key never leaves it but to /api.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def _file(relative: str) -> Path:
    """A file under STATIC_DIR, or 404 (no path escapes, no directories, known types only)."""
    root = STATIC_DIR.resolve()
    try:
        path = (root / relative).resolve()
        found = path.is_relative_to(root) and path.is_file() and path.suffix in CONTENT_TYPES
    except (OSError, ValueError):  # NUL bytes, names longer than the filesystem allows
        found = False
    if not found:
        raise web.HTTPNotFound()
    return path


def _serve(path: Path, cache: str) -> web.FileResponse:
    headers = {
        **SECURITY_HEADERS,
        "Content-Type": CONTENT_TYPES[path.suffix],
        "Cache-Control": cache,
    }
    return web.FileResponse(path, headers=headers)


@routes.get("/dashboard")
@doc(
    summary="The metrics dashboard (HTML)",
    auth="none",
    tags=("dashboard",),
    content_type="text/html",
)
async def dashboard_page(_: web.Request) -> web.FileResponse:
    return _serve(_file("index.html"), "no-cache")


@routes.get("/dashboard/static/{path:.+}")
@doc(
    summary="The dashboard's scripts, styles and vendored libraries",
    auth="none",
    tags=("dashboard",),
    responses={200: "", 404: ""},
    content_type="application/octet-stream",
)
async def dashboard_static(request: web.Request) -> web.FileResponse:
    # no-cache: the browser revalidates (cheap 304s), so an upgrade is never half-applied.
    return _serve(_file(request.match_info["path"]), "no-cache")
