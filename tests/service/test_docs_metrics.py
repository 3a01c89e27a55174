"""/metrics labels FastAPI's documentation routes by their path, not as "unmatched"."""

from __future__ import annotations

from fastapi.testclient import TestClient

from ccnet.service.core.config import Settings
from ccnet.service.main import create_app


def test_docs_routes_have_their_own_metrics_label() -> None:
    app = create_app(Settings(log_level="warning"), background_load=False)
    docs = ["/docs", "/openapi.json", *([app.redoc_url] if app.redoc_url else [])]
    with TestClient(app) as client:
        for url in docs:
            assert client.get(url).status_code == 200, url
        assert client.get("/no-such-page").status_code == 404
        metrics = client.get("/metrics").text
    for url in docs:
        assert f'route="{url}",status="200"' in metrics, url
    assert 'route="unmatched",status="404"} 1.0' in metrics  # only the unknown path
