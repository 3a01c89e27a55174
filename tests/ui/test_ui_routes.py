"""The demo page's routes on their own: the page, its whitelisted files and nothing else."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from ccnet.service.api.routes import ui

PAGE_FILES = ["index.html", "app.js", "app.css"]


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = FastAPI()
    app.include_router(ui.router)
    with TestClient(app) as test_client:
        yield test_client


def _assert_not_found(response: object, case: str) -> None:
    assert response.status_code == 404, f"{case}: {response.status_code}"
    assert response.headers["content-type"].startswith("application/json"), case
    assert response.json()["error"]["code"] == "not_found", f"{case}: {response.text}"


def test_index_serves_the_page(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-cache"
    for asset in ("/static/app.js", "/static/app.css"):
        assert f'"{asset}"' in response.text, f"index.html does not load {asset}"


@pytest.mark.parametrize(
    ("name", "media_type"),
    [("app.js", "text/javascript"), ("app.css", "text/css"), ("index.html", "text/html")],
)
def test_static_files_have_their_media_type(client: TestClient, name: str, media_type: str) -> None:
    response = client.get(f"/static/{name}")
    assert response.status_code == 200, name
    assert response.headers["content-type"].split(";")[0] == media_type, name
    assert response.headers["cache-control"] == "no-cache", name


@pytest.mark.parametrize("name", PAGE_FILES)
def test_page_loads_nothing_from_other_origins(client: TestClient, name: str) -> None:
    text = client.get(f"/static/{name}").text
    assert not re.findall(r"https?://", text), f"{name} names an external URL"
    assert "//" + "cdn" not in text.lower(), f"{name} refers to a CDN"


@pytest.mark.parametrize(
    "path",
    [
        "/static/nope.js",
        "/static/..%2Fpyproject.toml",
        "/static/..%2F..%2Fpyproject.toml",
        "/static/%2Fetc%2Fpasswd",
        "/static/sub/app.js",
        "/static/.",
        "/static/",
    ],
)
def test_anything_else_is_a_json_404(client: TestClient, path: str) -> None:
    _assert_not_found(client.get(path), path)


def test_dot_dot_never_reaches_the_project(client: TestClient) -> None:
    # the client resolves a literal `..` before sending; whatever route it lands on, it is
    # never the file itself
    response = client.get("/static/../pyproject.toml")
    assert response.status_code == 404
    assert "[project]" not in response.text


def test_only_the_shipped_files_are_whitelisted() -> None:
    names = set(ui._FILES)
    assert set(PAGE_FILES) <= names
    assert all("/" not in name and not name.startswith(".") for name in names), names
    assert {path.parent for path, _ in ui._FILES.values()} == {ui.STATIC_DIR}


def test_page_forbids_other_origins(client) -> None:
    """The browser is told that the page loads and sends nothing anywhere else."""
    policy = client.get("/").headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert "connect-src 'self' blob:" in policy and "frame-ancestors 'none'" in policy
    assert "http" not in policy
