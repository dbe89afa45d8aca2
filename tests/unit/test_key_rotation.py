"""A remembered user token lives no longer than the key that signed it is trusted.

Real JWKS over local HTTP, a controllable clock shared by the key set and the memo, and
tokens that expire in 2100 (what a leaked key would sign).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from genjobs.auth import JwksCache, KeySetUnavailable, UserTokenVerifier
from genjobs.errors import Unauthenticated
from tests.jwks_server import JwksServer
from tests.unit.test_jwks import FakeClock

YEAR_2100 = 4_102_444_800


class SigningKey:
    """An ES256 key and its JWKS entry."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.private = ec.generate_private_key(ec.SECP256R1())
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        self.jwk: dict[str, Any] = {**jwk, "kid": kid, "alg": "ES256", "use": "sig"}

    def token(self, issuer: str, sub: uuid.UUID, exp: int = YEAR_2100) -> str:
        claims = {
            "iss": issuer,
            "sub": str(sub),
            "aud": "authenticated",
            "role": "authenticated",
            "iat": int(time.time()),
            "exp": exp,
        }
        return jwt.encode(claims, self.private, algorithm="ES256", headers={"kid": self.kid})


@pytest.fixture
def server() -> Iterator[JwksServer]:
    srv = JwksServer()
    yield srv
    srv.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def old() -> SigningKey:
    return SigningKey("old")


@pytest.fixture
def new() -> SigningKey:
    return SigningKey("new")


def verifier_for(server: JwksServer, clock: FakeClock) -> UserTokenVerifier:
    jwks = JwksCache(f"{server.base_url}/auth/v1/.well-known/jwks.json", clock=clock)
    return UserTokenVerifier(supabase_url=server.base_url, jwt_secret=None, jwks=jwks, clock=clock)


def bearer(token: str) -> str:
    return f"Bearer {token}"


def test_a_revoked_key_ends_its_cached_tokens_at_the_next_refresh(
    server: JwksServer, clock: FakeClock, old: SigningKey, new: SigningKey
) -> None:
    server.jwks = {"keys": [old.jwk]}
    verifier = verifier_for(server, clock)
    issuer = verifier.issuer
    attacker, user = uuid.uuid4(), uuid.uuid4()
    leaked = old.token(issuer, attacker)
    assert verifier.verify(bearer(leaked)).id == attacker  # verified and remembered
    clock.now += 5
    verifier.verify(bearer(leaked))
    assert server.hits == 1

    server.jwks = {"keys": [new.jwk]}  # rotate to "new" and revoke "old"
    clock.now += 30  # past the refetch interval, well inside the 10 min TTL
    assert verifier.verify(bearer(new.token(issuer, user))).id == user  # refresh: "new" seen
    assert server.hits == 2
    with pytest.raises(Unauthenticated, match="unknown signing key") as info:
        verifier.verify(bearer(leaked))
    assert info.value.status == 401
    assert server.hits == 2  # refused from the refreshed set, no extra fetch


def test_a_cached_token_is_refused_within_ten_minutes_even_if_only_it_is_used(
    server: JwksServer, clock: FakeClock, old: SigningKey, new: SigningKey
) -> None:
    server.jwks = {"keys": [old.jwk]}
    verifier = verifier_for(server, clock)
    leaked = bearer(old.token(verifier.issuer, uuid.uuid4()))
    verifier.verify(leaked)
    server.jwks = {"keys": [new.jwk]}
    for _ in range(59):  # every 10 s for 9 min 50 s: served from memo and cached set
        clock.now += 10
        verifier.verify(leaked)
    assert server.hits == 1
    clock.now += 10  # 600 s: the key set's TTL and the memo's cap
    with pytest.raises(Unauthenticated, match="unknown signing key"):
        verifier.verify(leaked)
    assert server.hits == 2


def test_a_briefly_unreachable_key_set_still_serves_from_cache(
    server: JwksServer, clock: FakeClock, old: SigningKey
) -> None:
    server.jwks = {"keys": [old.jwk]}
    verifier = verifier_for(server, clock)
    user = uuid.uuid4()
    remembered = bearer(old.token(verifier.issuer, user))
    verifier.verify(remembered)
    server.status = 503
    clock.now += 20 * 60  # memo entry gone, key set stale, endpoint failing
    assert verifier.verify(remembered).id == user
    stranger = uuid.uuid4()
    assert verifier.verify(bearer(old.token(verifier.issuer, stranger))).id == stranger
    clock.now += 30 * 60
    assert verifier.verify(remembered).id == user
    assert server.hits == 3  # one failed retry per stale lookup, not one per call


def test_a_key_set_unrefreshed_for_over_an_hour_is_503(
    server: JwksServer, clock: FakeClock, old: SigningKey
) -> None:
    server.jwks = {"keys": [old.jwk]}
    verifier = verifier_for(server, clock)
    remembered = bearer(old.token(verifier.issuer, uuid.uuid4()))
    verifier.verify(remembered)
    server.status = 500
    clock.now += 3599
    verifier.verify(remembered)  # 59 min 59 s old: still trusted
    clock.now += 1
    with pytest.raises(KeySetUnavailable) as info:
        verifier.verify(remembered)
    assert info.value.status == 503
    assert 1 <= int(info.value.headers()["Retry-After"]) <= 30
    with pytest.raises(KeySetUnavailable):
        verifier.verify(bearer(old.token(verifier.issuer, uuid.uuid4())))

    server.status = 200  # the endpoint is back: the next allowed attempt restores service
    clock.now += 30
    assert verifier.verify(remembered).id is not None


def test_a_dead_key_endpoint_for_over_an_hour_is_503(
    server: JwksServer, clock: FakeClock, old: SigningKey
) -> None:
    server.jwks = {"keys": [old.jwk]}
    verifier = verifier_for(server, clock)
    remembered = bearer(old.token(verifier.issuer, uuid.uuid4()))
    verifier.verify(remembered)
    server.close()  # connection refused from now on
    clock.now += 15 * 60
    verifier.verify(remembered)
    clock.now += 46 * 60
    with pytest.raises(KeySetUnavailable, match="cannot be refreshed"):
        verifier.verify(remembered)
