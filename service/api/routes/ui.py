"""The browser demo page: ``/`` and its static files, served by the API process itself.

Only the files that ship in ``service/static`` are served: the directory is listed once at
import and a request names a file by its bare name, so no path can leave the directory.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response

__all__ = ["STATIC_DIR", "router"]

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"

# Explicit types for what the page is made of: the system's mimetypes table varies between
# hosts (some map .js to application/javascript, some have no .webmanifest at all).
_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
}
# Revalidate on every load, so a redeployed page never runs against a stale script.
_HEADERS = {"Cache-Control": "no-cache"}
# The page loads nothing from elsewhere, and the browser is told to hold it to that: its own
# script and styles, results shown through blob: URLs, requests to this origin only.
_PAGE_HEADERS = {
    **_HEADERS,
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self' blob:; "
        "img-src 'self' blob: data:; media-src 'self' blob:; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _list_static(directory: Path) -> dict[str, tuple[Path, str]]:
    if not directory.is_dir():
        return {}
    files = {}
    for path in sorted(directory.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            media_type = _MEDIA_TYPES.get(path.suffix.lower()) or (
                mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            )
            files[path.name] = (path, media_type)
    return files


_FILES = _list_static(STATIC_DIR)

router = APIRouter(tags=["ui"])


@router.get("/", include_in_schema=False)
def index() -> Response:
    """The demo page."""
    return _serve("index.html")


@router.get("/static/{name:path}", include_in_schema=False)
def static_file(name: str) -> Response:
    """One of the page's own files, by bare name; anything else is a 404."""
    return _serve(name)


def _serve(name: str) -> Response:
    entry = _FILES.get(name)
    if entry is None:
        return JSONResponse(
            {"error": {"code": "not_found", "message": f"no static file named {name!r}"}},
            status_code=404,
            headers=_HEADERS,
        )
    path, media_type = entry
    headers = (
        _PAGE_HEADERS if name == "index.html" else {**_HEADERS, "X-Content-Type-Options": "nosniff"}
    )
    return FileResponse(path, media_type=media_type, headers=headers)
