"""Local stand-in for Cloud Run's front end before the private functions: the invoker check.

In the cloud, worker, dead_letter and sweeper hold no public invoker binding, so Cloud Run
verifies each request's Google ID token (signature, audience = the service URL, expiry, and
that the caller holds run.invoker) before the container sees it, answers 401/403 itself
otherwise, and forwards the token with its signature replaced by `SIGNATURE_REMOVED_BY_GOOGLE`.
This process does the same on the functions' public local ports, so `make run` and the tests go
through the code path production runs.
"""

from __future__ import annotations

import argparse
import http.client
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from devstack.signing import GOOGLE_ISSUER, load_or_create_key

SIGNATURE_REMOVED = "SIGNATURE_REMOVED_BY_GOOGLE"
# Headers that belong to one connection (RFC 9110 §7.6.1), never forwarded.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}

log = logging.getLogger("devstack.cloud_run_frontend")


class Refused(Exception):
    """The invoker check failed: answered by the front end, never forwarded."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class PrivateService:
    """One private function: where callers reach it, where its container listens, who may call."""

    name: str
    port: int
    container_port: int
    invokers: frozenset[str]
    timeout_seconds: float

    @property
    def url(self) -> str:
        """The service URL, which is also the audience its callers' tokens must name."""
        return f"http://127.0.0.1:{self.port}/"

    @classmethod
    def parse(cls, spec: str) -> PrivateService:
        """`name=PORT:CONTAINER_PORT:TIMEOUT:invoker@x[,invoker@y]` (the CLI's --service)."""
        name, _, rest = spec.partition("=")
        port, container_port, timeout, invokers = rest.split(":", 3)
        emails = frozenset(e.strip().lower() for e in invokers.split(",") if e.strip())
        return cls(name, int(port), int(container_port), emails, float(timeout))


class InvokerCheck:
    """What Cloud Run checks before a private service sees a request."""

    def __init__(self, service: PrivateService, key: rsa.RSAPublicKey) -> None:
        self.service = service
        self._key = key
        # Cloud Run accepts the service URL with or without its trailing slash as audience.
        self._audiences = [service.url, service.url.rstrip("/")]

    def forwarded_authorization(self, header: str | None) -> str:
        """The Authorization header the container gets, or Refused (401 / 403)."""
        scheme, _, token = (header or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Refused(401, "no bearer token")
        token = token.strip()
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=["RS256"],
                audience=self._audiences,
                issuer=GOOGLE_ISSUER,
                options={"require": ["exp", "iat", "aud", "iss"]},
            )
        except jwt.PyJWTError as exc:
            raise Refused(401, f"token rejected: {type(exc).__name__}") from None
        email = claims.get("email")
        if claims.get("email_verified") is not True or not isinstance(email, str):
            raise Refused(403, "token names no verified identity")
        if email.lower() not in self.service.invokers:
            raise Refused(403, f"{email} does not hold run.invoker on {self.service.name}")
        return "Bearer " + token.rpartition(".")[0] + "." + SIGNATURE_REMOVED


def _refusal_page(status: int) -> bytes:
    """Cloud Run's own answer: an HTML page, not the function's problem+json."""
    title = "401 Unauthorized" if status == 401 else "403 Forbidden"
    return (
        f"<html><head><title>{title}</title></head><body><h1>Error: {title[4:]}</h1>"
        "<h2>Your client does not have permission to get URL / from this server.</h2>"
        "</body></html>"
    ).encode()


def handler_for(check: InvokerCheck) -> type[BaseHTTPRequestHandler]:
    """A request handler that checks the caller, then relays to the service's container."""
    service = check.service
    upstream = threading.local()

    def connection() -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(upstream, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(
                "127.0.0.1", service.container_port, timeout=service.timeout_seconds
            )
            upstream.conn = conn
        return conn

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _relay(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            try:
                authorization = check.forwarded_authorization(self.headers.get("Authorization"))
            except Refused as refused:
                log.info("%s: refused %s %s: %s", service.name, self.command, self.path, refused)
                self._answer(refused.status, _refusal_page(refused.status), "text/html")
                return
            headers = {
                k: v
                for k, v in self.headers.items()
                if k.lower() not in HOP_BY_HOP and k.lower() not in {"authorization", "host"}
            }
            headers.update(
                {
                    "Authorization": authorization,
                    "X-Forwarded-For": self.client_address[0],
                    "X-Forwarded-Proto": "http",
                    "Content-Length": str(len(body)),
                }
            )
            try:
                status, reply_headers, reply = self._send_upstream(headers, body)
            except TimeoutError:
                self._answer(504, b"upstream request timeout", "text/plain")
                return
            except (OSError, http.client.HTTPException):
                # The container is down or restarting: Cloud Run answers 503 as well.
                self._answer(503, b"service unavailable", "text/plain")
                return
            self.send_response(status)
            for name, value in reply_headers:
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def _send_upstream(
            self, headers: dict[str, str], body: bytes
        ) -> tuple[int, list[tuple[str, str]], bytes]:
            try:
                return self._exchange(headers, body)
            except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
                # A kept-alive connection the container had closed: one fresh try, as any
                # proxy does; a second failure is the container's.
                return self._exchange(headers, body)

        def _exchange(
            self, headers: dict[str, str], body: bytes
        ) -> tuple[int, list[tuple[str, str]], bytes]:
            conn = connection()
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                return response.status, response.getheaders(), response.read()
            except BaseException:
                conn.close()
                upstream.conn = None
                raise

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _relay

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


def serve(services: Sequence[PrivateService], key: rsa.RSAPublicKey) -> list[_Server]:
    """Bind every service's port, then serve each on a thread; returns the servers."""
    servers = [_Server(("127.0.0.1", s.port), handler_for(InvokerCheck(s, key))) for s in services]
    for server, service in zip(servers, services, strict=True):
        name = f"cloud-run-{service.name}"
        threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return servers


def main(argv: Sequence[str] | None = None) -> int:
    """Run the front end until killed."""
    parser = argparse.ArgumentParser(prog="python -m devstack.cloud_run_frontend")
    parser.add_argument("--signing-key", type=Path, required=True, help="the local Google key")
    parser.add_argument(
        "--service",
        action="append",
        type=PrivateService.parse,
        required=True,
        help="name=PORT:CONTAINER_PORT:TIMEOUT_SECONDS:invoker@x[,invoker@y]",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    key = load_or_create_key(args.signing_key).public_key()
    serve(args.service, key)
    for service in args.service:
        log.info("%s: %s -> container :%s", service.name, service.url, service.container_port)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    raise SystemExit(main())
