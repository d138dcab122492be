"""/docs and /redoc work without internet: every file the pages load is served by the API process itself."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx2
import pytest

from llmq.devstack.redis_server import RedisServer
from tests.stack import Stack

# What each kind of file must be served as.
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}


class Links(HTMLParser):
    """Every URL a page loads: `src` and `href` attributes, and the OpenAPI document its script fetches."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href", "spec-url") and value]

    def handle_data(self, data: str) -> None:
        self.urls += re.findall(r"""\burl:\s*['"]([^'"]+)['"]""", data)


@pytest.fixture(scope="module")
def api(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The API process alone (the pages need no worker)."""
    log_dir: Path = tmp_path_factory.mktemp("docs-api")
    stack = Stack(redis_server.url, "http://127.0.0.1:9/openai-compatible/v1", log_dir)
    try:
        yield stack.start_api()
    finally:
        stack.stop()


@pytest.mark.parametrize(("page", "loads"), [
    ("/docs", {"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png", "openapi.json"}),
    ("/redoc", {"redoc.standalone.js", "favicon.png", "openapi.json"}),
])
def test_docs_pages_load_only_files_the_api_serves(api: Stack, page: str, loads: set[str]) -> None:
    with httpx2.Client(base_url=api.base_url, timeout=30) as client:
        response = client.get(page)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        links = Links()
        links.feed(response.text)
        assert {url.rsplit("/", 1)[-1] for url in links.urls} == loads
        for url in links.urls:
            assert url.startswith("/") and not url.startswith("//"), f"{page} loads {url} from another host"
            asset = client.get(url)
            assert asset.status_code == 200, url
            expected = CONTENT_TYPES[Path(url).suffix]
            assert asset.headers["content-type"].startswith(expected), (url, asset.headers["content-type"])
            assert len(asset.content) > 1000, url
