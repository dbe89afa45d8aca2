"""The demo page's local server over real HTTP: its files, the real client, a local token."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from devstack.demo.server import DemoServer, origins_with_demo
from genjobs.auth.minting import DEMO_USER_ID
from genjobs.settings import LOCAL_JWT_SECRET, load_settings

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    server = DemoServer(("127.0.0.1", 0), "http://127.0.0.1:8080/")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_serves_the_page_and_the_real_client(base_url: str) -> None:
    page = httpx.get(f"{base_url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/demo.js">' in page.text
    client = httpx.get(f"{base_url}/genjobs.js")
    assert client.headers["content-type"].startswith("text/javascript")
    assert client.content == (ROOT / "clients" / "js" / "genjobs.js").read_bytes()
    assert httpx.get(f"{base_url}/demo.js").status_code == 200
    assert httpx.get(f"{base_url}/../README.md").status_code == 404


def test_config_hands_out_a_local_token_for_the_demo_user(base_url: str) -> None:
    response = httpx.get(f"{base_url}/config.json")
    assert response.headers["cache-control"] == "no-store"
    assert "access-control-allow-origin" not in response.headers  # other origins cannot read it
    config = response.json()
    assert config["apiBaseUrl"] == "http://127.0.0.1:8080"
    claims = jwt.decode(
        config["token"], LOCAL_JWT_SECRET, algorithms=["HS256"], audience="authenticated"
    )
    assert claims["sub"] == str(DEMO_USER_ID)


def test_answers_only_requests_addressed_to_this_machine(base_url: str) -> None:
    response = httpx.get(f"{base_url}/config.json", headers={"Host": "rebound.example:8070"})
    assert response.status_code == 421
    assert "token" not in response.text


def test_the_api_allows_the_demo_origin_on_its_actual_port() -> None:
    assert origins_with_demo(None, 8070).split(",") == [
        "http://localhost:3000",
        "http://localhost:5173",
        "http://localhost:8070",
    ]
    assert origins_with_demo("https://app.example.com", 9000) == (
        "https://app.example.com,http://localhost:9000"
    )
    allowed = load_settings("api", {"ALLOWED_ORIGINS": origins_with_demo(None, 9000)})
    assert "http://localhost:9000" in allowed.allowed_origins


def test_the_demo_origin_is_a_local_default_only() -> None:
    assert "http://localhost:8070" in load_settings("api", {}).allowed_origins
    given = load_settings("api", {"ALLOWED_ORIGINS": "https://app.example.com"})
    assert given.allowed_origins == ("https://app.example.com",)
    cloud = load_settings(
        "cli", {"GENJOBS_ENV": "cloud", "DATABASE_URL": "postgresql://u@db.example/x"}
    )
    assert "http://localhost:8070" not in cloud.allowed_origins
