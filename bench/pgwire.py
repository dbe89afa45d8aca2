"""A Postgres wire-protocol proxy that counts what clients send: statements, round trips."""

# Counting on the wire sees every statement a function sends (pings, BEGIN, COMMIT included),
# on any server, without pg_stat_statements (which needs shared_preload_libraries).

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections import Counter
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from genjobs.db import pg8000_url

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_CHUNK = 65536


def statement_kind(sql: str) -> str:
    """The statement's first keyword, lower-cased (`with`, `select`, `begin`, `commit`, …)."""
    words = sql.strip().rstrip(";").split(None, 1)
    # SQLAlchemy's pool_pre_ping sends an empty statement (";") on pg8000.
    return words[0].lower() if words else "empty"


class WireCounts:
    """Thread-safe counters of client messages, by kind."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, key: str, amount: int = 1) -> None:
        """Count one event."""
        with self._lock:
            self._counts[key] += amount

    def snapshot(self) -> dict[str, int]:
        """The counters now."""
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        """Start counting from zero."""
        with self._lock:
            self._counts.clear()


class _ClientStream:
    """Parses the frontend side of one connection and counts its messages."""

    def __init__(self, counts: WireCounts) -> None:
        self.counts = counts
        self.buffer = b""
        self.startup = True
        self.pending_kind = "unknown"
        self.awaits_reply = False

    def feed(self, data: bytes) -> None:
        """Count what one read brought; pipelined messages arrive together, one round trip."""
        self.buffer += data
        self._parse()
        if self.awaits_reply:
            self.awaits_reply = False
            self.counts.add("round_trips")

    def _parse(self) -> None:
        while True:
            if self.startup:
                if len(self.buffer) < 8:
                    return
                (length,) = struct.unpack("!I", self.buffer[:4])
                if len(self.buffer) < length:
                    return
                (code,) = struct.unpack("!I", self.buffer[4:8])
                self.buffer = self.buffer[length:]
                # After an SSL/GSS request the real startup message follows, also untyped.
                if code not in {_SSL_REQUEST, _GSSENC_REQUEST}:
                    self.startup = False
                    self.counts.add("connections")
                continue
            if len(self.buffer) < 5:
                return
            kind = self.buffer[:1]
            (length,) = struct.unpack("!I", self.buffer[1:5])
            if len(self.buffer) < 1 + length:
                return
            body = self.buffer[5 : 1 + length]
            self.buffer = self.buffer[1 + length :]
            self._message(kind, body)

    def _message(self, kind: bytes, body: bytes) -> None:
        if kind == b"Q":  # simple query: one statement, one round trip
            statement = statement_kind(body.rstrip(b"\0").decode(errors="replace"))
            self.counts.add("statements")
            self.counts.add(f"statement:{statement}")
            self.awaits_reply = True
        elif kind == b"P":  # parse: remember what the next Execute runs
            _name, _, rest = body.partition(b"\0")
            sql = rest.partition(b"\0")[0].decode(errors="replace")
            self.pending_kind = statement_kind(sql)
        elif kind == b"E":
            self.counts.add("statements")
            self.counts.add(f"statement:{self.pending_kind}")
        elif kind == b"S":  # sync: the client waits for ReadyForQuery
            self.awaits_reply = True


def relayed_url(upstream_url: str, port: int) -> str:
    """`upstream_url` pointed at a relay on 127.0.0.1:`port` (TCP, even if it named a socket)."""
    parts = urlsplit(upstream_url)
    credentials = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    query = {k: v for k, v in parse_qsl(parts.query) if k != "host"}
    netloc = f"{credentials}127.0.0.1:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), ""))


class CountingProxy:
    """Listens on 127.0.0.1 and relays each connection to the real server, counting."""

    def __init__(self, upstream_url: str) -> None:
        self.counts = WireCounts()
        self._upstream_url = upstream_url
        _, connect_args = pg8000_url(upstream_url)
        parts = urlsplit(upstream_url)
        self._unix_socket: str | None = connect_args.get("unix_sock")
        self._address = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._stopping = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def url(self) -> str:
        """The upstream URL, pointed at this proxy."""
        return relayed_url(self._upstream_url, self.port)

    def start(self) -> CountingProxy:
        """Accept connections on a background thread."""
        threading.Thread(target=self._accept, name="pgwire-accept", daemon=True).start()
        return self

    def stop(self) -> None:
        """Close the listener and every relayed connection."""
        self._stopping.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()

    def _upstream(self) -> socket.socket:
        if self._unix_socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(self._unix_socket)
            return sock
        return socket.create_connection(self._address)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            server = self._upstream()
            with self._lock:
                self._sockets += [client, server]
            stream = _ClientStream(self.counts)
            threading.Thread(target=self._pump, args=(client, server, stream), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, None), daemon=True).start()

    def _pump(
        self, source: socket.socket, target: socket.socket, stream: _ClientStream | None
    ) -> None:
        try:
            while data := source.recv(_CHUNK):
                if stream is not None:
                    stream.feed(data)
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
