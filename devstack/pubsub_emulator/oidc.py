"""Google-style OIDC tokens for push requests, and the certificate endpoints to verify them."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

log = logging.getLogger(__name__)

GOOGLE_ISSUER = "https://accounts.google.com"
TOKEN_LIFETIME_SECONDS = 3600
# Like Google, reuse a token for a while instead of signing one per push.
TOKEN_REUSE_MARGIN_SECONDS = 600
JWKS_PATH = "/oauth2/v3/certs"
PEM_CERTS_PATH = "/oauth2/v1/certs"
# How long stopping the certs server may take (the serve loop's polling interval).
SHUTDOWN_POLL_SECONDS = 0.05


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def service_account_id(email: str) -> str:
    """A stable 21-digit numeric id for an email, shaped like a service account's unique id."""
    digest = int.from_bytes(hashlib.sha256(email.encode()).digest()[:16], "big")
    return "1" + str(digest % 10**20).zfill(20)


def load_rsa_private_key(pem: bytes) -> rsa.RSAPrivateKey:
    """An RSA private key from PEM (tests share one with the emulator to sign pushes)."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TypeError("the push signing key must be an RSA private key")
    return key


class TokenIssuer:
    """Signs RS256 identity tokens with a key pair generated at startup."""

    def __init__(
        self, clock: Callable[[], float] = time.time, private_key_pem: bytes | None = None
    ) -> None:
        self._clock = clock
        self._key = (
            load_rsa_private_key(private_key_pem)
            if private_key_pem
            else rsa.generate_private_key(public_exponent=65537, key_size=2048)
        )
        public_der = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        # Google's kids are 40 hex digits; a fingerprint of the key keeps that shape.
        self.kid = hashlib.sha1(public_der, usedforsecurity=False).hexdigest()
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._pem_certificate: str | None = None

    def token(self, audience: str, email: str) -> str:
        """Return a token for `audience` identifying the service account `email`."""
        now = self._clock()
        with self._lock:
            cached = self._tokens.get((audience, email))
            if cached is not None and cached[1] - now > TOKEN_REUSE_MARGIN_SECONDS:
                return cached[0]
            issued = int(now)
            subject = service_account_id(email)
            claims = {
                "aud": audience,
                "azp": subject,
                "email": email,
                "email_verified": True,
                "exp": issued + TOKEN_LIFETIME_SECONDS,
                "iat": issued,
                "iss": GOOGLE_ISSUER,
                "sub": subject,
            }
            token = jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})
            self._tokens[(audience, email)] = (token, float(issued + TOKEN_LIFETIME_SECONDS))
            return token

    def jwks(self) -> dict[str, Any]:
        """The public key in the format of https://www.googleapis.com/oauth2/v3/certs."""
        numbers = self._key.public_key().public_numbers()
        key = {
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "kid": self.kid,
            "n": _b64url_uint(numbers.n),
            "e": _b64url_uint(numbers.e),
        }
        return {"keys": [key]}

    def pem_certificates(self) -> dict[str, str]:
        """The key as a self-signed X.509 certificate, keyed by kid (the v1 certs format)."""
        with self._lock:
            if self._pem_certificate is None:
                self._pem_certificate = self._self_signed_certificate()
            return {self.kid: self._pem_certificate}

    def _self_signed_certificate(self) -> str:
        # google-auth's default verifier reads this format; the name mirrors Google's certs.
        name = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, "federated-signon.system.gserviceaccount.com")]
        )
        now = dt.datetime.fromtimestamp(self._clock(), dt.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=14))
            .sign(self._key, hashes.SHA256())
        )
        return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


class CertsServer:
    """Serves the issuer's public keys over plain HTTP, where Google serves its own."""

    def __init__(self, issuer: TokenIssuer, host: str, port: int) -> None:
        self._issuer = issuer
        self._httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when asked for port 0)."""
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            args=(SHUTDOWN_POLL_SECONDS,),
            name="pubsub-certs-http",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        issuer = self._issuer

        class Handler(BaseHTTPRequestHandler):
            server_version = "pubsub-emulator"

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == JWKS_PATH:
                    self._send_json(issuer.jwks())
                elif path == PEM_CERTS_PATH:
                    self._send_json(issuer.pem_certificates())
                else:
                    self.send_error(HTTPStatus.NOT_FOUND)

            def _send_json(self, document: object) -> None:
                body = json.dumps(document, indent=2).encode()
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(body)))
                # Short, because a restarted emulator has a new key (verifiers also refetch
                # on an unknown kid).
                self.send_header("Cache-Control", "public, max-age=300")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("certs http: " + format, *args)

        return Handler
