"""HTTP server of the stub model, its in-process API and CLI."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import random
import select
import signal
import socket
import socketserver
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, Final, TypedDict, cast
from urllib.parse import parse_qs, urlsplit

from devstack.stub_model.answers import (
    ApiError,
    ChatRequest,
    Completion,
    Directives,
    complete,
    completion_chunks,
    completion_object,
    model_object,
    parse_chat_request,
    rate_limit_error,
    refusal_error,
    status_error,
)

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8090
DEFAULT_HANG_SECONDS: Final = 3600.0
DEFAULT_MODELS: Final = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1", "gpt-5-mini")
MAX_BODY_BYTES: Final = 16 * 1024 * 1024
MAX_RECORDED_CALLS: Final = 10_000
# Granularity at which sleeping/hanging requests notice shutdown or a vanished client.
_POLL_SECONDS: Final = 0.1

_log = logging.getLogger("devstack.stub_model")


class StubCall(TypedDict):
    """One recorded chat completion call."""

    id: int
    prompt: str
    model: str
    stream: bool
    status: int | None  # None while in flight (or abandoned at shutdown); 499: client left
    at: float
    cut: bool  # stub:cut dropped this call's connection mid-answer
    # What the model spent on the call, as a provider bills it: the prompt and every token
    # generated (for a stream, those sent before it ended or the client left).
    billed_tokens: int


# ---------------------------------------------------------------- state and server


class Chaos:
    """Random failures for every call (the fault suite): fractions of 429, 500 and hangs."""

    def __init__(self, spec: str, seed: int | None = None) -> None:
        self.rates: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, _, value = part.partition("=")
            if name not in {"429", "500", "hang"} or not 0 <= float(value) <= 1:
                raise ValueError(f"chaos entries are 429=F, 500=F or hang=F, not {part!r}")
            self.rates[name] = float(value)
        if sum(self.rates.values()) > 1:
            raise ValueError("chaos fractions add up to more than 1")
        self._random = random.Random(seed)  # noqa: S311 (fault injection, not security)
        self._lock = threading.Lock()

    def draw(self) -> str | None:
        """Which failure this call gets, if any."""
        with self._lock:
            roll = self._random.random()
        for name, rate in self.rates.items():
            if roll < rate:
                return name
            roll -= rate
        return None


class _State:
    """Recorded calls and stub:fail counters, shared by all handler threads."""

    def __init__(
        self, hang_seconds: float, models: Sequence[str], chaos: Chaos | None = None
    ) -> None:
        self.hang_seconds = hang_seconds
        self.chaos = chaos
        self.models = tuple(models)
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._calls: deque[StubCall] = deque(maxlen=MAX_RECORDED_CALLS)
        self._next_id = 1
        self._attempts: dict[str, int] = {}
        self._answers: dict[str, int] = {}  # what stub:cut=NxM counts

    def record(self, request: ChatRequest) -> StubCall:
        """Record an arriving call (status filled in later)."""
        with self._lock:
            call = StubCall(
                id=self._next_id,
                prompt=request.prompt,
                model=request.model,
                stream=request.stream,
                status=None,
                at=time.time(),
                cut=False,
                billed_tokens=0,
            )
            self._next_id += 1
            self._calls.append(call)
        return call

    def finish(self, call: StubCall, status: int | None) -> None:
        """Set the status of a recorded call."""
        with self._lock:
            call["status"] = status

    def attempt(self, prompt: str) -> int:
        """Count one more call with this exact prompt; returns its 1-based number."""
        with self._lock:
            count = self._attempts.get(prompt, 0) + 1
            self._attempts[prompt] = count
        return count

    def answered(self, prompt: str) -> int:
        """Count one more answer (past any scripted failure) to this exact prompt; 1-based."""
        with self._lock:
            count = self._answers.get(prompt, 0) + 1
            self._answers[prompt] = count
        return count

    def bill(self, call: StubCall, tokens: int) -> None:
        """Add tokens the model spent on this call."""
        with self._lock:
            call["billed_tokens"] += tokens

    def mark_cut(self, call: StubCall) -> None:
        """Record that stub:cut dropped this call."""
        with self._lock:
            call["cut"] = True

    def calls(self, contains: str | None = None) -> list[StubCall]:
        """Copies of the recorded calls, oldest first."""
        with self._lock:
            return [
                StubCall(**call)
                for call in self._calls
                if not contains or contains in call["prompt"]
            ]

    def reset(self) -> None:
        """Forget recorded calls and stub:fail / stub:cut counters."""
        with self._lock:
            self._calls.clear()
            self._attempts.clear()
            self._answers.clear()


class _Server(ThreadingHTTPServer):
    """Thread-per-connection server that can cut its open connections on stop."""

    daemon_threads = True  # never wait for hanging handlers on shutdown
    request_queue_size = 1024  # listen backlog for bursts of concurrent clients

    def __init__(self, address: tuple[str, int], state: _State) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.state = state
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup (slow on some hosts)."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log handler crashes; a client dropping its connection is routine."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        _log.exception("stub model: error serving %s", client_address)

    def close_connections(self) -> None:
        """Shut down every open client connection (unblocks idle keep-alive threads)."""
        with self.connections_lock:
            connections = list(self.connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the peer
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    """HTTP handler: the OpenAI routes, health and the /_stub admin API."""

    protocol_version = "HTTP/1.1"
    server_version = "stub-model/1.0"
    timeout = 120  # idle keep-alive connections are dropped after this
    disable_nagle_algorithm = True  # headers and body go out in separate writes

    @property
    def _server(self) -> _Server:
        return cast(_Server, self.server)

    def setup(self) -> None:
        """Track the connection so stop() can close it."""
        super().setup()
        with self._server.connections_lock:
            self._server.connections.add(self.connection)

    def finish(self) -> None:
        """Untrack the connection."""
        with self._server.connections_lock:
            self._server.connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Access log through logging, not stderr."""
        _log.info("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        """GET routes."""
        self._dispatch("GET", b"")

    def do_POST(self) -> None:
        """POST routes."""
        try:
            body = self._read_body()
        except ApiError as exc:
            self.close_connection = True  # the unread body would corrupt the next request
            self._send_error(exc)
            return
        self._dispatch("POST", body)

    def _dispatch(self, method: str, body: bytes) -> None:
        """Route a request; errors become OpenAI-style bodies."""
        try:
            self._route(method, body)
        except ApiError as exc:
            self._send_error(exc)
        except ConnectionError:
            self.close_connection = True
        except Exception:
            _log.exception("stub model failed on %s %s", method, self.path)
            self.close_connection = True  # a stream may have been cut mid-way
            self._send_error(status_error(500, "stub"))

    def _route(self, method: str, body: bytes) -> None:
        """Health, admin and (authenticated) /v1 routes."""
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        if path == "/healthz" and method == "GET":
            self._send_json(200, {"status": "ok"})
        elif path == "/_stub/calls" and method == "GET":
            contains = parse_qs(url.query).get("contains", [None])[0]
            self._send_json(200, self._server.state.calls(contains))
        elif path == "/_stub/reset" and method == "POST":
            self._server.state.reset()
            self._send_json(200, {"reset": True})
        elif path == "/v1" or path.startswith("/v1/"):
            self._check_auth()
            self._v1(method, path, body)
        else:
            raise ApiError(404, f"Invalid URL ({method} {url.path})")

    def _v1(self, method: str, path: str, body: bytes) -> None:
        """The OpenAI API routes."""
        if path == "/v1/chat/completions" and method == "POST":
            self._chat_completions(body)
        elif path == "/v1/models" and method == "GET":
            state = self._server.state
            self._send_json(
                200, {"object": "list", "data": [model_object(m) for m in state.models]}
            )
        elif path.startswith("/v1/models/") and method == "GET":
            self._send_json(200, model_object(path.removeprefix("/v1/models/")))
        else:
            raise ApiError(404, f"Invalid URL ({method} {path})")

    def _check_auth(self) -> None:
        """Require a non-empty bearer token, like the real API."""
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401,
                "You didn't provide an API key. You need to provide your API key in an"
                " Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )

    def _read_body(self) -> bytes:
        """The request body (Content-Length or chunked), size-limited."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        raw_length = self.headers.get("Content-Length", "0")
        try:
            length = int(raw_length)
        except ValueError:
            raise ApiError(400, "Invalid Content-Length header.") from None
        if length > MAX_BODY_BYTES:
            raise ApiError(413, "Request body too large.")
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes:
        """Decode a chunked request body."""
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024).split(b";", 1)[0].strip()
            try:
                size = int(line, 16)
            except ValueError:
                raise ApiError(400, "Malformed chunked body.") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            total += size
            if total > MAX_BODY_BYTES:
                raise ApiError(413, "Request body too large.")
            parts.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _chat_completions(self, raw: bytes) -> None:
        """POST /v1/chat/completions, driven by the prompt's directives."""
        try:
            body = json.loads(raw)
        except ValueError:
            raise ApiError(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you"
                " aren't using your HTTP library correctly. The OpenAI API expects a JSON payload,"
                " but what was sent was not valid JSON.)",
            ) from None
        request = parse_chat_request(body)
        directives = Directives.parse(request.prompt)
        state = self._server.state
        drawn = state.chaos.draw() if state.chaos else None
        if drawn is not None:
            directives = dataclasses.replace(
                directives,
                hang=directives.hang or drawn == "hang",
                rate_limit=directives.rate_limit or drawn == "429",
                server_error=directives.server_error or drawn == "500",
            )
        call = state.record(request)
        # Counted on arrival so concurrent retries see a consistent order.
        failure = self._scripted_failure(request, directives)

        if directives.hang:
            client_left = not self._wait(state.hang_seconds)
            state.finish(call, 499 if client_left and not state.stopping.is_set() else None)
            self.close_connection = True  # nothing is ever sent
            return
        if directives.sleep > 0 and not self._wait(directives.sleep):
            state.finish(call, None if state.stopping.is_set() else 499)
            self.close_connection = True
            return
        if failure is not None:
            state.finish(call, failure.status)
            raise failure

        completion = complete(request, directives)
        cut_after = self._cut_after(request, directives)
        # Recorded before sending: the client may look at the calls as soon as it has the answer.
        state.finish(call, 200)
        if cut_after is not None:
            state.mark_cut(call)
        state.bill(call, completion.prompt_tokens)
        try:
            if request.stream:
                sent = self._send_stream(request, completion, directives.pace_ms, cut_after, call)
                if not sent:
                    state.finish(call, None if state.stopping.is_set() else 499)
            elif cut_after is not None:
                state.bill(call, completion.completion_tokens)  # generated, then lost whole
                self._drop_connection()
            else:
                state.bill(call, completion.completion_tokens)
                self._send_json(200, completion_object(request.model, completion))
        except ConnectionError:
            state.finish(call, 499)
            raise

    def _scripted_failure(self, request: ChatRequest, directives: Directives) -> ApiError | None:
        """The error the directives ask for, if any (stub:fail before the fixed ones)."""
        if directives.fail is not None:
            status, times = directives.fail
            if self._server.state.attempt(request.prompt) <= times:
                return status_error(status, request.model)
        if directives.rate_limit:
            return rate_limit_error(request.model)
        if directives.server_error:
            return status_error(500, request.model)
        if directives.refuse:
            return refusal_error()
        return None

    def _cut_after(self, request: ChatRequest, directives: Directives) -> int | None:
        """After how many tokens stub:cut drops this call, if it is one of the first M."""
        if directives.cut is None:
            return None
        after, times = directives.cut
        return after if self._server.state.answered(request.prompt) <= times else None

    def _drop_connection(self) -> None:
        """Close the socket mid-response, as a failing network or proxy would."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _wait(self, seconds: float) -> bool:
        """Wait; False early if the server is stopping or the client has gone."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            if self._server.state.stopping.wait(min(remaining, _POLL_SECONDS)):
                return False
            if self._client_gone():
                return False
        return True

    def _client_gone(self) -> bool:
        """Whether the client closed its end (readable with no data)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)
        except (OSError, ValueError):
            return True

    def _headers(self, status: int, content_type: str, extra: Mapping[str, str]) -> None:
        """Status line and the common headers."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("x-request-id", f"req_{uuid.uuid4().hex}")
        self.send_header("openai-processing-ms", "1")
        for name, value in extra.items():
            self.send_header(name, value)

    def _send_json(
        self, status: int, payload: object, headers: Mapping[str, str] | None = None
    ) -> None:
        """A complete JSON response."""
        data = json.dumps(payload, ensure_ascii=False).encode()
        self._headers(status, "application/json", headers or {})
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, error: ApiError) -> None:
        """An OpenAI error object."""
        try:
            self._send_json(error.status, error.body(), error.headers)
        except ConnectionError:
            self.close_connection = True

    def _send_stream(
        self,
        request: ChatRequest,
        completion: Completion,
        pace_ms: float,
        cut_after: int | None,
        call: StubCall,
    ) -> bool:
        """A chat.completion.chunk SSE stream ending with ``data: [DONE]``; False if cut short.

        A cut stops before the finish chunk even when the answer has N tokens or fewer, so the
        client always sees a broken stream (no terminating HTTP chunk), never a clean end.
        """
        stream = completion_chunks(request, completion)
        self._headers(200, "text/event-stream; charset=utf-8", {"Cache-Control": "no-cache"})
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if pace_ms == 0 and cut_after is None:
            # No time between tokens: the whole answer in one write, as it was all there at
            # once (one write per event would let this server's own threads space them out).
            events = [stream.opening, *stream.tokens, *stream.closing]
            self.wfile.write(b"".join(map(_event, events)) + _DONE)
            self._server.state.bill(call, len(stream.tokens))
            return True
        self._write_event(stream.opening)
        for sent, token in enumerate(stream.tokens):
            if sent == cut_after:
                break
            if pace_ms > 0 and not self._wait(pace_ms / 1000):
                self._drop_connection()  # the client left, or the server is stopping
                return False
            self._write_event(token)
            self._server.state.bill(call, 1)
        if cut_after is not None:
            self._drop_connection()
            return True  # answered as scripted; the call record says cut
        for chunk in stream.closing:
            self._write_event(chunk)
        # One write with the final chunk: the SDK closes right after [DONE] without reading on.
        self.wfile.write(_DONE)
        return True

    def _write_event(self, chunk: dict[str, Any]) -> None:
        """Send one ``data:`` event as one HTTP/1.1 chunk."""
        self.wfile.write(_event(chunk))


def _chunk(data: bytes) -> bytes:
    """HTTP/1.1 chunked framing."""
    return b"%X\r\n%s\r\n" % (len(data), data)


def _event(chunk: dict[str, Any]) -> bytes:
    """One ``data:`` event as one HTTP/1.1 chunk."""
    return _chunk(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode())


# The stream's end: the [DONE] event and the last (empty) HTTP chunk.
_DONE = _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


# ---------------------------------------------------------------- public API


class StubModelServer:
    """In-process stub model server: ``StubModelServer(port=0).start()``, then ``.url``."""

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = 0,
        *,
        hang_seconds: float = DEFAULT_HANG_SECONDS,
        models: Sequence[str] = DEFAULT_MODELS,
        chaos: Chaos | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._state = _State(hang_seconds, models, chaos)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> StubModelServer:
        """Bind and serve in a background thread."""
        if self._server is not None:
            return self
        self._state.stopping.clear()
        server = _Server((self._host, self._port), self._state)
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": _POLL_SECONDS},
            name=f"stub-model:{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; hanging and sleeping requests are abandoned."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._state.stopping.set()
        server.shutdown()
        server.server_close()
        server.close_connections()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    @property
    def port(self) -> int:
        """The bound port (known after start())."""
        return self._port

    @property
    def root_url(self) -> str:
        """``http://host:port`` (health and /_stub admin routes)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def url(self) -> str:
        """The OpenAI base URL, ending in ``/v1``."""
        return f"{self.root_url}/v1"

    def calls(self, contains: str | None = None) -> list[StubCall]:
        """Recorded chat completion calls, optionally those whose prompt has a substring."""
        return self._state.calls(contains)

    def reset(self) -> None:
        """Forget recorded calls and stub:fail counters."""
        self._state.reset()

    def __enter__(self) -> StubModelServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: serve until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m devstack.stub_model", description="Local OpenAI-compatible stub model."
    )
    parser.add_argument(
        "--host",
        default=os.environ.get("STUB_MODEL_HOST", DEFAULT_HOST),
        help=f"listen address (env STUB_MODEL_HOST, default {DEFAULT_HOST})",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("STUB_MODEL_PORT", DEFAULT_PORT)),
        help=f"listen port, 0 for any free one (env STUB_MODEL_PORT, default {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--hang-seconds",
        type=float,
        default=DEFAULT_HANG_SECONDS,
        help="how long stub:hang holds a request",
    )
    parser.add_argument(
        "--chaos",
        default=os.environ.get("STUB_MODEL_CHAOS", ""),
        metavar="429=F,500=F,hang=F",
        help="fail these fractions of all calls at random (env STUB_MODEL_CHAOS)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for --chaos")
    parser.add_argument("--quiet", action="store_true", help="no access log")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s stub-model %(levelname)s %(message)s",
    )

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        chaos = Chaos(args.chaos, args.seed) if args.chaos else None
    except ValueError as exc:
        parser.error(str(exc))
    server = StubModelServer(args.host, args.port, hang_seconds=args.hang_seconds, chaos=chaos)
    try:
        server.start()
    except OSError as exc:
        print(f"stub model: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(f"stub model ready: {server.url}", flush=True)
    while not stop.wait(0.5):  # a timed wait keeps the main thread responsive to signals
        pass
    server.stop()
    print("stub model stopped", flush=True)
    return 0
