"""GET /dashboard: the operator's and user's web page (static files from this function's
folder; the page signs in with a Supabase JWT and calls the same API as everyone)."""

from __future__ import annotations

from pathlib import Path

from shared import api
from shared.errors import not_found

STATIC = Path(__file__).with_name("static")
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8"}
ASSETS = {path.name: path for path in STATIC.iterdir() if path.suffix in TYPES}
# Only this origin's own files and API: no CDN, no inline script.
HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:;"
                                      " frame-ancestors 'none'",
           "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


def _file(name: str) -> api.Reply:
    path = ASSETS.get(name)
    if path is None:
        raise not_found(f"no dashboard file {name[:60]!r}")
    return api.Reply(200, path.read_text(), HEADERS, content_type=TYPES[path.suffix])


def page(request: api.Request) -> api.Reply:
    return _file("index.html")


def asset(request: api.Request) -> api.Reply:
    return _file(request.path_param("asset"))


handler = api.handler_for_routes({"GET /dashboard": page, "GET /dashboard/{asset}": asset})
