"""Every way a user token can be wrong, over real HTTP against a real api process."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from genjobs.auth.minting import mint_api_key, mint_user_token
from genjobs.settings import LOCAL_JWT_SECRET, LOCAL_SUPABASE_URL
from tests.openapi_check import assert_conforms
from tests.security.conftest import JWT_SECRET, SecurityStack

ROUTES = (
    ("GET", "/v1/generations"),
    ("POST", "/v1/generations"),
    ("GET", f"/v1/generations/{uuid.uuid4()}"),
    ("POST", f"/v1/generations/{uuid.uuid4()}/cancel"),
)
SUMMARIZE = {"task": "summarize", "input": {"text": "Tokens are checked before anything."}}
# JwksCache's default: unknown kids refetch the key set at most this often.
REFETCH_INTERVAL_SECONDS = 30


def b64(data: bytes) -> str:
    """Unpadded base64url, as in JWTs."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    """A JSON value as a JWT segment."""
    return b64(json.dumps(value).encode())


def hmac_token(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """An HS256 token signed with arbitrary bytes (e.g. a public key, to confuse algorithms)."""
    signing_input = f"{b64json(header)}.{b64json(claims)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def hs256(stack: SecurityStack, **claims: Any) -> str:
    """An HS256 token with the stack's secret and these claim overrides."""
    return jwt.encode(stack.keys.claims(**claims), JWT_SECRET, algorithm="HS256")


def tampered(token: str, stack: SecurityStack) -> str:
    """The token with its payload swapped for another user's, signature kept."""
    head, _, signature = token.split(".")
    return f"{head}.{b64json(stack.keys.claims(sub=uuid.uuid4()))}.{signature}"


def foreign_es256(stack: SecurityStack, kid: str) -> str:
    """Signed by a key the project never published, under `kid`."""
    key = ec.generate_private_key(ec.SECP256R1())
    return jwt.encode(stack.keys.claims(), key, algorithm="ES256", headers={"kid": kid})


Bad = Callable[[SecurityStack], str | None]
NOW = int(time.time())
BAD_HEADERS: dict[str, Bad] = {
    "missing": lambda s: None,
    "empty": lambda s: "",
    "basic-scheme": lambda s: "Basic dXNlcjpwYXNz",
    "bearer-without-token": lambda s: "Bearer",
    "not-a-jwt": lambda s: "Bearer not-a-jwt",
    # Under the HTTP server's 8 KiB header limit (it answers 431 itself above that).
    "long-garbage-token": lambda s: "Bearer " + "a" * 8_000 + ".b.c",
    "expired-hs256": lambda s: "Bearer " + hs256(s, exp=NOW - 300, iat=NOW - 900),
    "expired-es256": lambda s: "Bearer " + s.keys.sign(s.keys.claims(exp=NOW - 300)),
    "nbf-in-future-hs256": lambda s: "Bearer " + hs256(s, nbf=int(time.time()) + 600),
    "nbf-in-future-rs256": lambda s: (
        "Bearer " + s.keys.sign(s.keys.claims(nbf=int(time.time()) + 600), "rs-1")
    ),
    "no-exp": lambda s: "Bearer " + hs256(s, exp=None),
    "aud-anon": lambda s: "Bearer " + hs256(s, aud="anon"),
    "aud-other-list": lambda s: "Bearer " + s.keys.sign(s.keys.claims(aud=["other", "x"])),
    "iss-other-project": lambda s: "Bearer " + hs256(s, iss="https://other.supabase.co/auth/v1"),
    "iss-local-default": lambda s: "Bearer " + hs256(s, iss=f"{LOCAL_SUPABASE_URL}/auth/v1"),
    "alg-none": lambda s: (
        f"Bearer {b64json({'alg': 'none', 'typ': 'JWT'})}.{b64json(s.keys.claims())}."
    ),
    "alg-none-bogus-signature": lambda s: (
        f"Bearer {b64json({'alg': 'none'})}.{b64json(s.keys.claims())}.{b64(b'x' * 32)}"
    ),
    "alg-HS512": lambda s: (
        "Bearer " + jwt.encode(s.keys.claims(), JWT_SECRET * 2, algorithm="HS512")
    ),
    "hs256-with-es-public-key": lambda s: (
        "Bearer "
        + hmac_token(
            {"alg": "HS256", "typ": "JWT", "kid": "es-1"},
            s.keys.claims(),
            s.keys.public_pem("es-1"),
        )
    ),
    "hs256-with-rs-public-key": lambda s: (
        "Bearer "
        + hmac_token(
            {"alg": "HS256", "typ": "JWT", "kid": "rs-1"},
            s.keys.claims(),
            s.keys.public_pem("rs-1"),
        )
    ),
    "hs256-with-the-jwks": lambda s: (
        "Bearer "
        + hmac_token({"alg": "HS256", "typ": "JWT"}, s.keys.claims(), s.keys.jwks_document())
    ),
    "hs256-with-the-default-secret": lambda s: (
        "Bearer " + mint_user_token(secret=LOCAL_JWT_SECRET, supabase_url=s.keys.url)
    ),
    "rs256-naming-the-es-key": lambda s: (
        "Bearer "
        + jwt.encode(
            s.keys.claims(), s.keys._private["rs-1"][1], algorithm="RS256", headers={"kid": "es-1"}
        )
    ),
    "unknown-kid": lambda s: "Bearer " + foreign_es256(s, "rotated-away"),
    "no-kid": lambda s: (
        "Bearer " + jwt.encode(s.keys.claims(), s.keys._private["es-1"][1], algorithm="ES256")
    ),
    "known-kid-foreign-key": lambda s: "Bearer " + foreign_es256(s, "es-1"),
    "tampered-hs256": lambda s: "Bearer " + tampered(hs256(s), s),
    "tampered-es256": lambda s: "Bearer " + tampered(s.keys.sign(s.keys.claims()), s),
    "tampered-rs256": lambda s: "Bearer " + tampered(s.keys.sign(s.keys.claims(), "rs-1"), s),
    "anon-api-key": lambda s: "Bearer " + mint_api_key(secret=JWT_SECRET, role="anon"),
    "service-role-api-key": lambda s: (
        "Bearer " + mint_api_key(secret=JWT_SECRET, role="service_role")
    ),
    "service-role-with-user-claims": lambda s: "Bearer " + hs256(s, role="service_role"),
    "sub-not-a-user-id": lambda s: "Bearer " + s.keys.sign(s.keys.claims(sub="service-account")),
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_bad_tokens_are_401_problems_with_www_authenticate(
    security_stack: SecurityStack, openapi_document: dict[str, Any], case: str
) -> None:
    """Each broken token gets 401 problem+json with a Bearer challenge on every user route."""
    authorization = BAD_HEADERS[case](security_stack)
    headers = {"Authorization": authorization} if authorization is not None else {}
    for method, path in ROUTES:
        response = httpx.request(
            method, security_stack.api_url + path, headers=headers, json=SUMMARIZE, timeout=10
        )
        assert response.status_code == 401, (case, method, path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        challenge = response.headers["WWW-Authenticate"]
        assert challenge.startswith('Bearer realm="genjobs", error="invalid_token"'), challenge
        assert_conforms(openapi_document, response)
        token = (authorization or "").partition(" ")[2]
        for part in token.split("."):
            if len(part) > 8:  # the answer never echoes the token
                assert part not in response.text and part not in challenge


@pytest.mark.parametrize("alg_kid", [("HS256", None), ("ES256", "es-1"), ("RS256", "rs-1")])
def test_valid_tokens_of_each_algorithm_are_accepted(
    security_stack: SecurityStack, alg_kid: tuple[str, str | None]
) -> None:
    """The positive control: the same routes answer 200 for well-formed tokens."""
    alg, kid = alg_kid
    user = uuid.uuid4()
    claims = security_stack.keys.claims(sub=user)
    token = (
        hs256(security_stack, sub=str(user))
        if kid is None
        else security_stack.keys.sign(claims, kid)
    )
    response = httpx.get(
        f"{security_stack.api_url}/v1/generations",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert response.status_code == 200, (alg, response.text)
    assert response.json() == {"items": [], "next_cursor": None}


def test_anonymous_users_are_refused_unless_allowed(
    security_stack: SecurityStack, openapi_document: dict[str, Any]
) -> None:
    """is_anonymous tokens: 403 with an insufficient_scope challenge; 200 where allowed."""
    token = security_stack.token(is_anonymous=True)
    headers = {"Authorization": f"Bearer {token}"}
    refused = httpx.get(f"{security_stack.api_url}/v1/generations", headers=headers, timeout=10)
    assert refused.status_code == 403, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert 'error="insufficient_scope"' in refused.headers["WWW-Authenticate"]
    assert "anonymous" in refused.json()["detail"]
    assert_conforms(openapi_document, refused)
    submit = httpx.post(
        f"{security_stack.api_url}/v1/generations", headers=headers, json=SUMMARIZE, timeout=10
    )
    assert submit.status_code == 403
    allowed = httpx.get(
        f"{security_stack.anon_api_url}/v1/generations", headers=headers, timeout=10
    )
    assert allowed.status_code == 200, allowed.text


def test_the_key_set_is_cached_and_unknown_kids_cannot_hammer_it(
    security_stack: SecurityStack,
) -> None:
    """Many asymmetric requests and 25 random kids cost at most one more JWKS fetch."""
    keys = security_stack.keys
    url = f"{security_stack.api_url}/v1/generations"
    warm = httpx.get(url, headers={"Authorization": f"Bearer {keys.sign(keys.claims())}"})
    assert warm.status_code == 200
    before = len(keys.fetches)
    for _ in range(10):
        token = keys.sign(keys.claims(), "rs-1")
        assert httpx.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert len(keys.fetches) == before  # served from the cache
    for _ in range(25):
        token = foreign_es256(security_stack, f"random-{uuid.uuid4().hex}")
        response = httpx.get(url, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401
        assert "unknown signing key" in response.json()["detail"]
    assert len(keys.fetches) - before <= 1


@pytest.mark.run_last
def test_rotation_accepts_the_new_key_and_ends_the_revoked_ones_tokens(
    security_stack: SecurityStack,
) -> None:
    """A key published later is fetched on first sight of its kid; that refresh also ends
    every remembered token of a key it no longer lists, even one with `exp` in 2100."""
    keys = security_stack.keys
    url = f"{security_stack.api_url}/v1/generations"
    cached = httpx.get(url, headers={"Authorization": f"Bearer {keys.sign(keys.claims())}"})
    assert cached.status_code == 200 and keys.fetches, "the api has cached the key set"
    leaked = {"Authorization": "Bearer " + keys.sign(keys.claims(exp=4_102_444_800), "es-retiring")}
    for _ in range(2):  # verified, then served from the api's memo
        assert httpx.get(url, headers=leaked, timeout=10).status_code == 200
    kid = f"es-rotated-{uuid.uuid4().hex[:8]}"
    keys.add(kid, "ES256")
    keys.revoke("es-retiring")
    # Unknown kids refetch at most once per interval (the anti-hammering rule above).
    wait = keys.fetches[-1] + REFETCH_INTERVAL_SECONDS + 1 - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    before = len(keys.fetches)
    for _ in range(3):
        token = keys.sign(keys.claims(), kid)
        response = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert response.status_code == 200, response.text
    assert len(keys.fetches) == before + 1  # fetched once, then cached
    refused = httpx.get(url, headers=leaked, timeout=10)
    assert refused.status_code == 401, refused.text
    assert "unknown signing key" in refused.json()["detail"]
