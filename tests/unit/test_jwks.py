"""JwksCache against a real local HTTP server: caching, rotation, refetch budget, outages."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from genjobs.auth.jwks import JwksCache, KeySetUnavailable, parse_jwks
from genjobs.errors import Unauthenticated
from tests.jwks_server import JwksServer


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ec_jwk(kid: str) -> dict[str, Any]:
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    jwk: dict[str, Any] = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
    return {**jwk, "kid": kid, "alg": "ES256", "use": "sig", "key_ops": ["verify"], "ext": True}


@pytest.fixture(scope="module")
def rsa_jwk() -> dict[str, Any]:
    public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    jwk: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(public, as_dict=True)
    return {**jwk, "kid": "rsa-1", "alg": "RS256", "use": "sig"}


@pytest.fixture
def server() -> Iterator[JwksServer]:
    srv = JwksServer()
    srv.jwks = {"keys": [ec_jwk("ec-1")]}
    yield srv
    srv.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/jwks.json"


def test_fetches_once_and_serves_from_cache(server: JwksServer, clock: FakeClock) -> None:
    cache = JwksCache(server.url, clock=clock)
    key = cache.get_key("ec-1")
    assert key.key_id == "ec-1"
    assert key.algorithm_name == "ES256"
    for _ in range(5):
        assert cache.get_key("ec-1") is key
    assert server.hits == 1


def test_refetches_after_ttl(server: JwksServer, clock: FakeClock) -> None:
    cache = JwksCache(server.url, ttl_seconds=600, clock=clock)
    cache.get_key("ec-1")
    clock.now += 599
    cache.get_key("ec-1")
    assert server.hits == 1
    clock.now += 2
    cache.get_key("ec-1")
    assert server.hits == 2


def test_rotated_key_is_accepted_without_restart(
    server: JwksServer, clock: FakeClock, rsa_jwk: dict[str, Any]
) -> None:
    cache = JwksCache(server.url, clock=clock)
    cache.get_key("ec-1")
    server.jwks = {"keys": [*server.jwks["keys"], rsa_jwk]}
    clock.now += 31  # well inside the TTL, past the refetch interval
    assert cache.get_key("rsa-1").algorithm_name == "RS256"
    assert cache.get_key("ec-1").key_id == "ec-1"
    assert server.hits == 2


def test_unknown_kids_refetch_at_most_once_per_interval(
    server: JwksServer, clock: FakeClock
) -> None:
    cache = JwksCache(server.url, min_refetch_interval=30, clock=clock)
    cache.get_key("ec-1")
    clock.now += 60
    for _ in range(50):
        with pytest.raises(Unauthenticated, match="unknown signing key") as info:
            cache.get_key(str(uuid.uuid4()))
        assert "WWW-Authenticate" in info.value.headers()
    assert server.hits == 2  # the first unknown kid refetched; the other 49 did not
    clock.now += 29
    with pytest.raises(Unauthenticated):
        cache.get_key("still-unknown")
    assert server.hits == 2
    clock.now += 1
    with pytest.raises(Unauthenticated):
        cache.get_key("still-unknown")
    assert server.hits == 3


def test_unknown_kid_right_after_first_fetch_does_not_refetch(
    server: JwksServer, clock: FakeClock
) -> None:
    cache = JwksCache(server.url, clock=clock)
    with pytest.raises(Unauthenticated):
        cache.get_key("nope")  # the first fetch happens here
    with pytest.raises(Unauthenticated):
        cache.get_key("nope-again")
    assert server.hits == 1


def test_server_down_with_nothing_cached_is_retry_later(clock: FakeClock) -> None:
    cache = JwksCache(closed_port_url(), timeout=1, clock=clock)
    with pytest.raises(KeySetUnavailable) as info:
        cache.get_key("ec-1")
    assert info.value.status == 503
    assert int(info.value.headers()["Retry-After"]) >= 1


def test_failed_fetch_is_not_retried_by_every_request(clock: FakeClock) -> None:
    calls: list[tuple[str, float]] = []

    def failing_fetch(url: str, timeout: float) -> bytes:
        calls.append((url, timeout))
        raise ConnectionRefusedError

    cache = JwksCache("http://keys.invalid/jwks", timeout=2, fetch=failing_fetch, clock=clock)
    for _ in range(10):
        with pytest.raises(KeySetUnavailable):
            cache.get_key("ec-1")
    assert calls == [("http://keys.invalid/jwks", 2)]
    clock.now += 30
    with pytest.raises(KeySetUnavailable):
        cache.get_key("ec-1")
    assert len(calls) == 2


def test_stale_keys_serve_while_the_endpoint_fails(server: JwksServer, clock: FakeClock) -> None:
    cache = JwksCache(server.url, clock=clock)
    cache.get_key("ec-1")
    server.status = 500
    clock.now += 601
    assert cache.get_key("ec-1").key_id == "ec-1"
    assert cache.get_key("ec-1").key_id == "ec-1"
    assert server.hits == 2  # one failed refresh, then backing off
    with pytest.raises(KeySetUnavailable):
        cache.get_key("new-kid")  # might be a real new key: not the client's fault
    server.status = 200
    clock.now += 30
    assert cache.get_key("ec-1").key_id == "ec-1"
    assert server.hits == 3


def test_stale_keys_serve_for_at_most_an_hour_then_503(
    server: JwksServer, clock: FakeClock
) -> None:
    cache = JwksCache(server.url, clock=clock)
    cache.get_key("ec-1")
    server.status = 500
    clock.now += 3599
    assert cache.get_key("ec-1").key_id == "ec-1"
    clock.now += 1
    with pytest.raises(KeySetUnavailable) as info:
        cache.get_key("ec-1")  # a revoked key must not stay valid for a whole outage
    assert info.value.status == 503
    assert 1 <= int(info.value.headers()["Retry-After"]) <= 30
    clock.now += 10
    with pytest.raises(KeySetUnavailable):
        cache.get_key("ec-1")
    server.status = 200
    clock.now += 20  # the next attempt the refetch budget allows
    assert cache.get_key("ec-1").key_id == "ec-1"


def test_a_refresh_reports_the_kids_that_left(
    server: JwksServer, clock: FakeClock, rsa_jwk: dict[str, Any]
) -> None:
    server.jwks = {"keys": [ec_jwk("a"), ec_jwk("b"), rsa_jwk]}
    cache = JwksCache(server.url, clock=clock)
    removed: list[frozenset[str]] = []
    cache.on_keys_removed(removed.append)
    cache.get_key("a")
    assert removed == []  # the first fetch removes nothing
    server.jwks = {"keys": [ec_jwk("c"), rsa_jwk]}
    clock.now += 601
    with pytest.raises(Unauthenticated):
        cache.get_key("a")
    assert removed == [frozenset({"a", "b"})]
    server.status = 500
    clock.now += 601
    cache.get_key("c")  # a failed refresh removes nothing
    assert removed == [frozenset({"a", "b"})]


def test_a_ttl_beyond_the_staleness_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="max_stale"):
        JwksCache("http://x/jwks", ttl_seconds=7200, max_stale_seconds=3600)


@pytest.mark.parametrize(
    "document",
    [b"not json", b"[]", b'{"keys": "x"}', b'{"keys": []}', b'{"nokeys": 1}'],
)
def test_unusable_documents_are_retry_later(document: bytes, clock: FakeClock) -> None:
    cache = JwksCache("http://x/jwks", fetch=lambda url, timeout: document, clock=clock)
    with pytest.raises(KeySetUnavailable):
        cache.get_key("ec-1")


def test_http_error_status_is_retry_later(server: JwksServer, clock: FakeClock) -> None:
    server.status = 404
    with pytest.raises(KeySetUnavailable):
        JwksCache(server.url, clock=clock).get_key("ec-1")


def test_non_http_urls_are_refused(tmp_path: Any, clock: FakeClock) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [ec_jwk("ec-1")]}))
    with pytest.raises(KeySetUnavailable):
        JwksCache(f"file://{path}", clock=clock).get_key("ec-1")


def test_secret_and_encryption_keys_are_skipped(rsa_jwk: dict[str, Any]) -> None:
    keys = parse_jwks(
        json.dumps(
            {
                "keys": [
                    {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"},
                    {**rsa_jwk, "kid": "enc", "use": "enc"},
                    {**rsa_jwk, "kid": None},
                    {"kty": "EC", "kid": "bad-curve", "crv": "P-999", "x": "AA", "y": "AA"},
                    "not a key",
                    rsa_jwk,
                ]
            }
        ).encode()
    )
    assert list(keys) == ["rsa-1"]


def test_concurrent_cold_requests_fetch_once(server: JwksServer) -> None:
    server.delay = 0.05
    cache = JwksCache(server.url)
    results: list[str | None] = []
    barrier = threading.Barrier(16)

    def worker() -> None:
        barrier.wait()
        results.append(cache.get_key("ec-1").key_id)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert results == ["ec-1"] * 16
    assert server.hits == 1
