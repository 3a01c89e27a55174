"""/docs: Swagger UI served from this process, so it renders with no internet.

FastAPI's own /docs loads Swagger UI from a CDN and is a blank page offline (air-gapped
clusters, laptops on a plane). The assets here come from the ``fastapi-offline`` package,
pinned in pyproject.toml; only its named files are served. The page's one inline script is
allowed by its hash in a restrictive Content-Security-Policy.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, Response

from ccnet.service.api.errors import error_response

__all__ = ["ASSETS", "router"]

_STATIC = Path(fastapi_offline.__file__).resolve().parent / "static"
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon.png": "image/png",
}
_PREFIX = "/docs/assets"

router = APIRouter(include_in_schema=False)


def _page() -> tuple[bytes, str]:
    html = get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="CCNet segmentation service - API",
        swagger_js_url=f"{_PREFIX}/swagger-ui-bundle.js",
        swagger_css_url=f"{_PREFIX}/swagger-ui.css",
        swagger_favicon_url=f"{_PREFIX}/favicon.png",
        oauth2_redirect_url=None,
    ).body
    inline = re.findall(rb"<script>(.*?)</script>", html, flags=re.DOTALL)
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'"
        for script in inline
    )
    csp = (
        f"default-src 'none'; script-src 'self' {hashes}; "
        # Swagger UI sets style attributes from its script
        "style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return html, csp


_HTML, _CSP = _page()


@router.get("/docs")
def docs() -> Response:
    """The interactive API documentation."""
    return Response(
        _HTML,
        media_type="text/html; charset=utf-8",
        headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-cache"},
    )


@router.get(f"{_PREFIX}/{{name}}")
def asset(name: str) -> Response:
    """One of Swagger UI's files, by bare name."""
    media_type = ASSETS.get(name)
    if media_type is None:
        return error_response(404, "not_found", f"no documentation asset named {name!r}")
    return FileResponse(_STATIC / name, media_type=media_type)
