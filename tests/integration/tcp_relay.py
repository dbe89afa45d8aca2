"""A loopback TCP relay in front of Postgres that can go silent or cut, as a dying network does."""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
from urllib.parse import parse_qsl, urlsplit

from bench.pgwire import relayed_url

_CHUNK = 65536


class _Pair:
    """One relayed connection: client socket, server socket, and what the network does now."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.stalled = threading.Event()
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class TcpRelay:
    """Listens on 127.0.0.1 and relays each connection to the Postgres of `upstream_url`.

    With `tls`, the relay ends a TLS connection first, as Cloud SQL's server-side proxy does.
    """

    def __init__(self, upstream_url: str, *, tls: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(upstream_url)
        self._upstream_url = upstream_url
        socket_dir = dict(parse_qsl(parts.query)).get("host", "")
        self._unix_path = f"{socket_dir}/.s.PGSQL.{parts.port or 5432}" if socket_dir else None
        self._address = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._tls = tls
        self.port: int = self._listener.getsockname()[1]
        self._pairs: list[_Pair] = []
        self._lock = threading.Lock()

    def url(self) -> str:
        """The upstream URL, pointed at this relay."""
        return relayed_url(self._upstream_url, self.port)

    def start(self) -> TcpRelay:
        """Accept connections on a background thread."""
        threading.Thread(target=self._accept, name="tcp-relay-accept", daemon=True).start()
        return self

    def stall(self) -> None:
        """Stop forwarding on every open connection, leaving it open (a half-open peer)."""
        with self._lock:
            for pair in self._pairs:
                pair.stalled.set()

    def cut(self) -> None:
        """Close every open connection at once, both sides (a dropped network path)."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            pair.close()

    def stop(self) -> None:
        """Close the listener and every relayed connection."""
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept: the port is free now
        with contextlib.suppress(OSError):
            self._listener.close()
        self.cut()

    def _upstream(self) -> socket.socket:
        if self._unix_path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(self._unix_path)
            return sock
        return socket.create_connection(self._address)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # stopped
            if self._tls is not None:
                try:
                    client.settimeout(10)
                    client = self._tls.wrap_socket(client, server_side=True)
                    client.settimeout(None)
                except (OSError, ssl.SSLError):
                    client.close()
                    continue
            pair = _Pair(client, self._upstream())
            with self._lock:
                self._pairs.append(pair)
            threading.Thread(target=self._pump, args=(pair,), daemon=True).start()

    def _pump(self, pair: _Pair) -> None:
        ends = {pair.client: pair.server, pair.server: pair.client}
        try:
            while not pair.closed.is_set():
                if pair.stalled.is_set():  # read nothing, send nothing: the client waits
                    pair.closed.wait(0.05)
                    continue
                # TLS may hold decrypted bytes that select() cannot see.
                buffered = [s for s in ends if isinstance(s, ssl.SSLSocket) and s.pending()]
                readable = buffered or select.select(list(ends), [], [], 0.05)[0]
                for source in readable:
                    data = source.recv(_CHUNK)
                    if not data:
                        return
                    ends[source].sendall(data)
        except OSError:
            return
        finally:
            pair.close()
