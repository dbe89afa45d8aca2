"""Verified tokens are trusted until they expire, and only verified ones are remembered."""

from __future__ import annotations

import time
from typing import Any

import pytest

from genjobs.auth import UserTokenVerifier, user_tokens, verified
from genjobs.auth.minting import DEMO_USER_ID, mint_user_token
from genjobs.auth.verified import VerifiedTokens
from genjobs.errors import Unauthenticated
from genjobs.settings import LOCAL_JWT_SECRET, LOCAL_SUPABASE_URL


def test_a_token_is_verified_once_until_it_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = UserTokenVerifier(supabase_url=LOCAL_SUPABASE_URL, jwt_secret=LOCAL_JWT_SECRET)
    token = mint_user_token(
        secret=LOCAL_JWT_SECRET, supabase_url=LOCAL_SUPABASE_URL, ttl_seconds=60
    )
    assert verifier.verify(f"Bearer {token}").id == DEMO_USER_ID

    def no_second_check(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a remembered token was decoded again")

    monkeypatch.setattr(user_tokens.jwt, "decode", no_second_check)
    assert verifier.verify(f"Bearer {token}").id == DEMO_USER_ID

    # Past its exp the token is checked afresh (and here the check fails).
    later = time.time() + 61
    monkeypatch.setattr(verified.time, "time", lambda: later)
    with pytest.raises(AssertionError, match="decoded again"):
        verifier.verify(f"Bearer {token}")


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
