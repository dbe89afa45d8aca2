"""A stdlib HTTP server for the demo page, its script, the real browser client and a local token.

It exists only in the local stack: the token it hands out is signed with the local JWT secret,
and it answers only requests addressed to this machine by name (no DNS rebinding).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Final
from urllib.parse import urlsplit

from genjobs.auth.minting import mint_user_token
from genjobs.settings import LOCAL_ALLOWED_ORIGINS, LOCAL_JWT_SECRET, LOCAL_SUPABASE_URL

HERE: Final = Path(__file__).resolve().parent
CLIENT: Final = HERE.parents[1] / "clients" / "js" / "genjobs.js"
TOKEN_TTL_SECONDS: Final = 3600
LOCAL_HOSTS: Final = frozenset({"localhost", "127.0.0.1"})
# Path → (file, content type); /genjobs.js is the client itself, not a copy.
FILES: Final = {
    "/": (HERE / "index.html", "text/html; charset=utf-8"),
    "/index.html": (HERE / "index.html", "text/html; charset=utf-8"),
    "/demo.js": (HERE / "demo.js", "text/javascript; charset=utf-8"),
    "/demo.css": (HERE / "demo.css", "text/css; charset=utf-8"),
    "/genjobs.js": (CLIENT, "text/javascript; charset=utf-8"),
}


def demo_origin(port: int) -> str:
    """The origin the page is loaded from (what the api's CORS allow-list must name)."""
    return f"http://localhost:{port}"


def origins_with_demo(given: str | None, port: int) -> str:
    """ALLOWED_ORIGINS for the local api: what was given (else the local default) plus the
    demo page's origin on its actual port."""
    origins = [o.strip() for o in given.split(",") if o.strip()] if given else []
    origins = origins or list(LOCAL_ALLOWED_ORIGINS)
    if demo_origin(port) not in origins:
        origins.append(demo_origin(port))
    return ",".join(origins)


class DemoHandler(BaseHTTPRequestHandler):
    """GET the page's files, and /config.json: the api's URL and a fresh local token."""

    server: DemoServer
    server_version = "genjobs-demo"

    def do_GET(self) -> None:
        host = (urlsplit(f"//{self.headers.get('Host', '')}").hostname or "").lower()
        if host not in LOCAL_HOSTS:
            self._send(HTTPStatus.MISDIRECTED_REQUEST, b"local requests only\n", "text/plain")
            return
        path = urlsplit(self.path).path
        if path == "/config.json":
            self._send(HTTPStatus.OK, self._config(), "application/json")
        elif path in FILES:
            file, content_type = FILES[path]
            self._send(HTTPStatus.OK, file.read_bytes(), content_type)
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    def _config(self) -> bytes:
        token = mint_user_token(
            secret=LOCAL_JWT_SECRET, supabase_url=LOCAL_SUPABASE_URL, ttl_seconds=TOKEN_TTL_SECONDS
        )
        return json.dumps({"apiBaseUrl": self.server.api_url, "token": token}).encode()

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        # Edits to the page show on reload; the token is never reused from a cache.
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """One line per request, tagged like the other local processes."""
        sys.stderr.write(f"[demo] {format % args}\n")


class DemoServer(ThreadingHTTPServer):
    """The server, knowing the api's base URL to hand the page."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], api_url: str) -> None:
        super().__init__(address, DemoHandler)
        self.api_url = api_url.rstrip("/")


def main(argv: Sequence[str] | None = None) -> int:
    """Serve on 127.0.0.1 until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m devstack.demo", description=__doc__)
    parser.add_argument("--port", type=int, default=8070)
    parser.add_argument("--api-url", default="http://127.0.0.1:8080")
    args = parser.parse_args(argv)
    server = DemoServer(("127.0.0.1", args.port), args.api_url)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(f"[demo] serving {demo_origin(args.port)} (api {server.api_url})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
