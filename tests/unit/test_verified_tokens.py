"""The memo of verified tokens: bounded in size and age, and only verified tokens enter it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from genjobs.auth import JwksCache, UserTokenVerifier, user_tokens
from genjobs.auth.minting import DEMO_USER_ID, mint_user_token
from genjobs.auth.verified import MAX_AGE_SECONDS, VerifiedTokens
from genjobs.errors import Unauthenticated
from genjobs.settings import LOCAL_JWT_SECRET, LOCAL_SUPABASE_URL
from tests.jwks_server import JwksServer
from tests.unit.test_jwks import FakeClock

YEAR_2100 = 4_102_444_800.0


def ec_key(kid: str) -> tuple[ec.EllipticCurvePrivateKey, dict[str, Any]]:
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return private, {**jwk, "kid": kid, "alg": "ES256", "use": "sig"}


@pytest.fixture
def server() -> Iterator[JwksServer]:
    srv = JwksServer()
    yield srv
    srv.close()


def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record each full verification (signature check) the verifier makes."""
    calls: list[str] = []
    real = user_tokens.jwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(user_tokens.jwt, "decode", counting)
    return calls


def test_a_token_is_verified_once_until_its_exp(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    verifier = UserTokenVerifier(
        supabase_url=LOCAL_SUPABASE_URL, jwt_secret=LOCAL_JWT_SECRET, clock=clock
    )
    token = mint_user_token(
        secret=LOCAL_JWT_SECRET, supabase_url=LOCAL_SUPABASE_URL, ttl_seconds=60
    )
    decodes = count_decodes(monkeypatch)
    assert verifier.verify(f"Bearer {token}").id == DEMO_USER_ID
    clock.now += 59
    assert verifier.verify(f"Bearer {token}").id == DEMO_USER_ID
    assert len(decodes) == 1
    clock.now += 2  # past its exp: checked afresh
    verifier.verify(f"Bearer {token}")  # (still inside PyJWT's 30 s leeway on the real clock)
    assert len(decodes) == 2


def test_hs256_memo_lasts_at_most_ten_minutes_even_with_exp_in_2100(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    verifier = UserTokenVerifier(
        supabase_url=LOCAL_SUPABASE_URL, jwt_secret=LOCAL_JWT_SECRET, clock=clock
    )
    now = int(time.time())
    claims = {
        "iss": f"{LOCAL_SUPABASE_URL}/auth/v1",
        "sub": str(DEMO_USER_ID),
        "aud": "authenticated",
        "role": "authenticated",
        "iat": now,
        "exp": int(YEAR_2100),
    }
    token = jwt.encode(claims, LOCAL_JWT_SECRET, algorithm="HS256")
    decodes = count_decodes(monkeypatch)
    verifier.verify(f"Bearer {token}")
    clock.now += MAX_AGE_SECONDS - 1
    verifier.verify(f"Bearer {token}")
    assert len(decodes) == 1
    clock.now += 1
    verifier.verify(f"Bearer {token}")
    assert len(decodes) == 2


def test_a_rejected_token_is_not_remembered() -> None:
    verifier = UserTokenVerifier(supabase_url=LOCAL_SUPABASE_URL, jwt_secret=LOCAL_JWT_SECRET)
    token = mint_user_token(secret="x" * 40, supabase_url=LOCAL_SUPABASE_URL)
    for _ in range(2):
        with pytest.raises(Unauthenticated, match="signature"):
            verifier.verify(f"Bearer {token}")


def test_the_memo_is_bounded() -> None:
    memo: VerifiedTokens[int] = VerifiedTokens(limit=3)
    expires = time.time() + 60
    for n in range(3):
        memo.put(f"t{n}", n, expires)
    assert [memo.get(f"t{n}") for n in range(3)] == [0, 1, 2]
    memo.put("t3", 3, expires)  # full: starts over rather than grow
    assert [memo.get(f"t{n}") for n in range(4)] == [None, None, None, 3]


def test_without_a_key_set_entries_still_last_at_most_max_age() -> None:
    """What service tokens get today: `VerifiedTokens(limit)` with put(token, value, exp)."""
    clock = FakeClock()
    memo: VerifiedTokens[str] = VerifiedTokens(8, clock=clock)
    memo.put("forever", "v", YEAR_2100)
    memo.put("already-expired", "v", time.time() - 1)
    assert memo.get("already-expired") is None and len(memo) == 1
    clock.now += MAX_AGE_SECONDS - 0.5
    assert memo.get("forever") == "v"
    clock.now += 0.5
    assert memo.get("forever") is None
    assert len(memo) == 0


def test_a_refresh_without_a_kid_drops_every_token_it_verified(
    server: JwksServer,
) -> None:
    clock = FakeClock()
    _, old = ec_key("old")
    _, kept = ec_key("kept")
    server.jwks = {"keys": [old, kept]}
    keys = JwksCache(server.url, clock=clock)
    memo: VerifiedTokens[str] = VerifiedTokens(16, key_set=keys, clock=clock)
    keys.get_key("old")
    for n in range(3):
        memo.put(f"old-{n}", "by old", YEAR_2100, kid="old")
    memo.put("kept-0", "by kept", YEAR_2100, kid="kept")
    memo.put("hs256", "by the secret", YEAR_2100)
    assert len(memo) == 5

    server.jwks = {"keys": [kept]}  # "old" revoked
    clock.now += 31
    with pytest.raises(Unauthenticated):
        keys.get_key("brand-new")  # any refresh will do; this one is an unknown kid's
    assert len(memo) == 2  # dropped at the refresh, before anyone asks for them
    assert [memo.get(f"old-{n}") for n in range(3)] == [None] * 3
    assert memo.get("kept-0") == "by kept"
    assert memo.get("hs256") == "by the secret"


def test_an_entry_put_after_its_kid_left_is_never_served(server: JwksServer) -> None:
    """A verification that raced a refresh (key fetched before, memo written after)."""
    clock = FakeClock()
    _, old = ec_key("old")
    _, new = ec_key("new")
    server.jwks = {"keys": [old]}
    keys = JwksCache(server.url, clock=clock)
    memo: VerifiedTokens[str] = VerifiedTokens(16, key_set=keys, clock=clock)
    keys.get_key("old")
    server.jwks = {"keys": [new]}
    clock.now += 31
    keys.get_key("new")  # the refresh that drops "old"
    memo.put("late", "v", YEAR_2100, kid="old")
    assert memo.get("late") is None
    assert len(memo) == 0
