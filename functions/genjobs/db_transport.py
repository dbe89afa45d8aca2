"""How a database connection travels: TLS as libpq's sslmode means it, sockets that cannot hang."""

from __future__ import annotations

import logging
import socket
import ssl
from typing import Any

from genjobs.errors import ConfigurationError

log = logging.getLogger(__name__)

SSLMODES = ("disable", "prefer", "require", "verify-ca", "verify-full")

# An idle connection to a vanished peer (a NAT or proxy that forgot it) is noticed in about a
# minute instead of the kernel's two hours; a blocked read is bounded by the socket timeout.
KEEPALIVE_IDLE_SECONDS = 30
KEEPALIVE_INTERVAL_SECONDS = 10
KEEPALIVE_COUNT = 3


def tls_connect_args(sslmode: str, sslrootcert: str | None) -> dict[str, Any]:
    """pg8000's `ssl_context` for a TCP connection with libpq's `sslmode` and `sslrootcert`."""
    if sslmode not in SSLMODES:
        raise ConfigurationError(f"sslmode must be one of {', '.join(SSLMODES)}")
    if sslmode == "disable":
        return {"ssl_context": False}  # pg8000 never sends the SSLRequest
    if sslmode == "prefer":
        # pg8000's own default: ask for TLS (unverified), carry on in plain if the server refuses.
        return {"ssl_context": None}
    if sslmode == "require" and sslrootcert is None:
        # Encrypted, certificate not checked; a server that refuses TLS is an error.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return {"ssl_context": context}
    # verify-ca, verify-full, and (as in libpq) require with a root certificate given.
    try:
        context = ssl.create_default_context(cafile=sslrootcert)
    except (OSError, ssl.SSLError) as error:
        raise ConfigurationError(f"sslrootcert {sslrootcert!r} cannot be read") from error
    context.check_hostname = sslmode == "verify-full"
    return {"ssl_context": context}


def harden_socket(dbapi_connection: Any, timeout: float) -> None:
    """Bound every read and write, and probe idle TCP peers, whoever opened the socket.

    pg8000 applies its timeout and keepalive only to sockets it opens itself; the Cloud SQL
    connector hands it one without either, where a half-open connection blocks forever.
    """
    sock = getattr(dbapi_connection, "_usock", None)
    if not isinstance(sock, socket.socket):
        log.warning("pg8000 connection has no socket to harden: timeout and keepalive not set")
        return
    sock.settimeout(timeout)
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # a Unix socket has no peer that can silently vanish
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE_SECONDS),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_SECONDS),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
    ):
        option = getattr(socket, name, None)  # Linux; macOS lacks TCP_KEEPIDLE
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
