"""Cloud SQL on loopback, for the real connector: its Admin API and its TLS server-side proxy.

The Admin API answers the two calls the connector makes (connectSettings, generateEphemeralCert)
in Google's JSON; the proxy ends the connector's TLS and relays to a real Postgres through a
TcpRelay, which can then go silent or cut. The connector always dials port 3307: `dial_here`
points it at the proxy's free port instead, so parallel runs never collide.
"""

from __future__ import annotations

import datetime
import json
import ssl
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from google.oauth2.credentials import Credentials

from tests.integration.certificates import PEM, issue, self_signed_ca
from tests.integration.tcp_relay import TcpRelay

REGION = "test-region"


class FakeCloudSql:
    """One instance, `test-project:test-region:test-instance`, in front of `upstream_url`."""

    instance = f"test-project:{REGION}:test-instance"

    def __init__(self, upstream_url: str) -> None:
        self._ca_key, self._ca_cert = self_signed_ca("fake Cloud SQL server CA")
        server_key = ec.generate_private_key(ec.SECP256R1())
        server_cert = issue(self._ca_key, self._ca_cert, server_key.public_key(), "server", [])
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory() as folder:
            cert_file, key_file = Path(folder) / "server.crt", Path(folder) / "server.key"
            cert_file.write_bytes(server_cert.public_bytes(PEM))
            key_file.write_bytes(
                server_key.private_bytes(
                    PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
            tls.load_cert_chain(cert_file, key_file)
        self.proxy = TcpRelay(upstream_url, tls=tls)
        self._api = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.api_endpoint = f"http://127.0.0.1:{self._api.server_address[1]}"
        self.ephemeral_certs_issued = 0

    def start(self) -> FakeCloudSql:
        """Serve the Admin API and the proxy on background threads."""
        threading.Thread(target=self._api.serve_forever, daemon=True).start()
        self.proxy.start()
        return self

    def stop(self) -> None:
        """Close both servers and every relayed connection."""
        self._api.shutdown()
        self._api.server_close()
        self.proxy.stop()

    def dial_here(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Make the connector dial this proxy's port instead of Cloud SQL's 3307."""
        from google.cloud.sql.connector import connector

        monkeypatch.setattr(connector, "SERVER_PROXY_PORT", self.proxy.port)

    def connector(self) -> Any:
        """A real Connector pointed at this fake, with a token that needs no refresh."""
        from google.cloud.sql.connector import Connector

        token = Credentials(
            token="fake-token",
            expiry=datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
            + datetime.timedelta(hours=1),
        )
        return Connector(
            refresh_strategy="lazy", sqladmin_api_endpoint=self.api_endpoint, credentials=token
        )

    def connect_settings(self) -> dict[str, Any]:
        """The connectSettings answer: the proxy's address and the server CA."""
        return {
            "kind": "sql#connectSettings",
            "region": REGION,
            "databaseVersion": "POSTGRES_15",
            "backendType": "SECOND_GEN",
            "ipAddresses": [{"type": "PRIMARY", "ipAddress": "127.0.0.1"}],
            "serverCaCert": {"cert": self._ca_cert.public_bytes(PEM).decode()},
        }

    def ephemeral_cert(self, public_key_pem: str) -> dict[str, Any]:
        """The generateEphemeralCert answer: the client's key, certified by the CA."""
        public_key = serialization.load_pem_public_key(public_key_pem.encode())
        assert isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
        cert = issue(self._ca_key, self._ca_cert, public_key, "ephemeral", [])
        self.ephemeral_certs_issued += 1
        return {"ephemeralCert": {"cert": cert.public_bytes(PEM).decode()}}


def _handler(cloud_sql: FakeCloudSql) -> type[BaseHTTPRequestHandler]:
    class AdminApi(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.endswith("/connectSettings"):
                self._answer(200, cloud_sql.connect_settings())
            else:
                self._answer(404, {"error": {"message": f"unknown: {self.path}"}})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path.endswith(":generateEphemeralCert"):
                self._answer(200, cloud_sql.ephemeral_cert(body["public_key"]))
            else:
                self._answer(404, {"error": {"message": f"unknown: {self.path}"}})

        def _answer(self, status: int, document: dict[str, Any]) -> None:
            payload = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *_args: Any) -> None:
            pass

    return AdminApi
