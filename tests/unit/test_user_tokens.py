"""The Supabase access-token matrix: every way a token can be wrong, and the right ones."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from genjobs.auth import JwksCache, KeySetUnavailable, User, UserTokenVerifier
from genjobs.auth.minting import DEMO_USER_ID, mint_api_key, mint_user_token
from genjobs.errors import ConfigurationError, Forbidden, Unauthenticated
from genjobs.settings import LOCAL_JWT_SECRET, LOCAL_SUPABASE_URL
from tests.jwks_server import JwksServer

ISSUER = f"{LOCAL_SUPABASE_URL}/auth/v1"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(obj: Any) -> str:
    return b64(json.dumps(obj).encode())


class Keys:
    """An ES256 and an RS256 signing key, published in a JWKS like Supabase's."""

    def __init__(self) -> None:
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ec_jwk = jwt.algorithms.ECAlgorithm.to_jwk(self.ec.public_key(), as_dict=True)
        rsa_jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa.public_key(), as_dict=True)
        self.jwks = {
            "keys": [
                {**ec_jwk, "kid": "ec-kid", "alg": "ES256", "use": "sig", "key_ops": ["verify"]},
                {**rsa_jwk, "kid": "rsa-kid", "alg": "RS256", "use": "sig"},
            ]
        }

    def public_pem(self, alg: str) -> bytes:
        key = self.ec if alg == "ES256" else self.rsa
        return key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, claims: dict[str, Any], alg: str, kid: str | None = None) -> str:
        key = self.ec if alg == "ES256" else self.rsa
        headers = {"kid": kid or ("ec-kid" if alg == "ES256" else "rsa-kid")}
        return jwt.encode(claims, key, algorithm=alg, headers=headers)


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


@pytest.fixture(scope="module")
def server(keys: Keys) -> Iterator[JwksServer]:
    srv = JwksServer(keys.jwks)
    yield srv
    srv.close()


@pytest.fixture
def verifier(server: JwksServer) -> UserTokenVerifier:
    jwks = JwksCache(f"{server.base_url}/auth/v1/.well-known/jwks.json")
    return UserTokenVerifier(
        supabase_url=LOCAL_SUPABASE_URL, jwt_secret=LOCAL_JWT_SECRET, jwks=jwks
    )


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": str(DEMO_USER_ID),
        "aud": "authenticated",
        "exp": now + 3600,
        "iat": now,
        "email": "demo@example.com",
        "role": "authenticated",
        "session_id": "0b8ae6b5-b5a4-4c1b-9bb6-8b2b1c2a0d11",
        "is_anonymous": False,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hs256(payload: dict[str, Any], secret: str = LOCAL_JWT_SECRET) -> str:
    return jwt.encode(payload, secret, algorithm="HS256")


def reject(verifier: UserTokenVerifier, header: str | None, match: str) -> Unauthenticated:
    """Assert a 401 with WWW-Authenticate, a precise detail and no trace of the token."""
    with pytest.raises(Unauthenticated, match=match) as info:
        verifier.verify(header)
    exc = info.value
    assert exc.status == 401
    www = exc.headers()["WWW-Authenticate"]
    assert www.startswith('Bearer realm="genjobs", error="invalid_token"')
    if header and len(header) > 20:
        token = header.split(" ", 1)[-1]
        for part in [token, *token.split(".")]:
            if len(part) > 8:
                assert part not in str(exc)
                assert part not in www
    return exc


# --- the Authorization header -------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (None, "missing Authorization header"),
        ("", "Authorization header is empty"),
        ("   ", "Authorization header is empty"),
        ("Basic dXNlcjpwYXNz", "scheme must be Bearer"),
        ("Token abc.def.ghi", "scheme must be Bearer"),
        ("Bearer", "Bearer token is empty"),
        ("Bearer    ", "Bearer token is empty"),
        ("Bearer garbage", "not a JWT"),
        ("Bearer a.b", "not a JWT"),
        ("Bearer a.b.c.d", "not a JWT"),
        ("Bearer a b.c.d", "not a JWT"),
        ("Bearer ey$.ey.sig", "not a JWT"),
        ("Bearer aaaa.bbbb.cccc", "token header is malformed"),
        ("Bearer " + "a" * 20_000 + ".b.c", "too large"),
    ],
)
def test_malformed_headers_are_401(
    verifier: UserTokenVerifier, header: str | None, match: str
) -> None:
    reject(verifier, header, match)


def test_two_part_token_is_401(verifier: UserTokenVerifier) -> None:
    token = mint_user_token(secret=LOCAL_JWT_SECRET, supabase_url=LOCAL_SUPABASE_URL)
    reject(verifier, "Bearer " + token.rsplit(".", 1)[0], "not a JWT")


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_scheme_is_case_insensitive(verifier: UserTokenVerifier, scheme: str) -> None:
    token = mint_user_token(secret=LOCAL_JWT_SECRET, supabase_url=LOCAL_SUPABASE_URL)
    assert verifier.verify(f"{scheme} {token}").id == DEMO_USER_ID


# --- good tokens ----------------------------------------------------------------------------


def test_minted_hs256_token_gives_the_user(verifier: UserTokenVerifier) -> None:
    token = mint_user_token(
        secret=LOCAL_JWT_SECRET, supabase_url=LOCAL_SUPABASE_URL, email="demo@example.com"
    )
    user = verifier.verify(f"Bearer {token}")
    assert user == User(
        id=DEMO_USER_ID,
        role="authenticated",
        email="demo@example.com",
        is_anonymous=False,
        session_id=user.session_id,
    )
    assert user.session_id is not None
    uuid.UUID(user.session_id)


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_asymmetric_tokens_give_the_user(verifier: UserTokenVerifier, keys: Keys, alg: str) -> None:
    sub = uuid.uuid4()
    user = verifier.verify("Bearer " + keys.sign(claims(sub=str(sub)), alg))
    assert user.id == sub
    assert user.email == "demo@example.com"


def test_audience_list_containing_authenticated_is_accepted(verifier: UserTokenVerifier) -> None:
    token = hs256(claims(aud=["authenticated", "other"]))
    assert verifier.verify(f"Bearer {token}").id == DEMO_USER_ID


def test_empty_email_claim_is_none(verifier: UserTokenVerifier) -> None:
    token = mint_user_token(secret=LOCAL_JWT_SECRET, supabase_url=LOCAL_SUPABASE_URL)
    assert verifier.verify(f"Bearer {token}").email is None


def test_small_clock_skew_is_tolerated(verifier: UserTokenVerifier) -> None:
    now = int(time.time())
    token = hs256(claims(exp=now - 10, nbf=now + 10, iat=now + 10))
    assert verifier.verify(f"Bearer {token}").id == DEMO_USER_ID


def test_trailing_slash_in_supabase_url_is_ignored() -> None:
    v = UserTokenVerifier(supabase_url=LOCAL_SUPABASE_URL + "/", jwt_secret=LOCAL_JWT_SECRET)
    token = mint_user_token(secret=LOCAL_JWT_SECRET, supabase_url=LOCAL_SUPABASE_URL)
    assert v.verify(f"Bearer {token}").id == DEMO_USER_ID


def test_jwks_is_fetched_only_for_asymmetric_tokens(server: JwksServer, keys: Keys) -> None:
    v = UserTokenVerifier(supabase_url=server.base_url, jwt_secret=LOCAL_JWT_SECRET)
    before = len(server.paths)
    hs = hs256(claims(iss=f"{server.base_url}/auth/v1"))
    v.verify(f"Bearer {hs}")
    assert len(server.paths) == before  # HS256 needs no key set
    es = keys.sign(claims(iss=f"{server.base_url}/auth/v1"), "ES256")
    assert v.verify(f"Bearer {es}").id == DEMO_USER_ID
    assert server.paths[before:] == ["/auth/v1/.well-known/jwks.json"]


# --- lifetime, audience, issuer, claims -----------------------------------------------------


def test_expired_token_is_401(verifier: UserTokenVerifier) -> None:
    token = mint_user_token(
        secret=LOCAL_JWT_SECRET, supabase_url=LOCAL_SUPABASE_URL, ttl_seconds=-120
    )
    reject(verifier, f"Bearer {token}", "token has expired")


def test_token_not_yet_valid_is_401(verifier: UserTokenVerifier) -> None:
    token = hs256(claims(nbf=int(time.time()) + 300))
    reject(verifier, f"Bearer {token}", "not valid yet")


@pytest.mark.parametrize("aud", ["anon", ["anon", "other"], "", 42])
def test_wrong_audience_is_401(verifier: UserTokenVerifier, aud: Any) -> None:
    reject(verifier, "Bearer " + hs256(claims(aud=aud)), "audience|missing the 'aud'")


@pytest.mark.parametrize(
    "iss", ["https://evil.supabase.co/auth/v1", LOCAL_SUPABASE_URL, "supabase-demo"]
)
def test_wrong_issuer_is_401(verifier: UserTokenVerifier, iss: str) -> None:
    reject(verifier, "Bearer " + hs256(claims(iss=iss)), "issued by another issuer")


@pytest.mark.parametrize("missing", ["exp", "sub", "aud", "iss"])
def test_required_claims(verifier: UserTokenVerifier, missing: str) -> None:
    payload = claims()
    del payload[missing]
    reject(verifier, "Bearer " + hs256(payload), f"missing the '{missing}' claim")


@pytest.mark.parametrize("sub", ["not-a-uuid", "", "1234"])
def test_subject_must_be_a_uuid(verifier: UserTokenVerifier, sub: str) -> None:
    reject(verifier, "Bearer " + hs256(claims(sub=sub)), "subject is not a user id")


@pytest.mark.parametrize("role", ["supabase_admin", "postgres", "", None])
def test_other_roles_are_401(verifier: UserTokenVerifier, role: str | None) -> None:
    reject(verifier, "Bearer " + hs256(claims(role=role)), "role is not 'authenticated'")


@pytest.mark.parametrize("role", ["anon", "service_role"])
def test_api_keys_are_not_user_tokens(verifier: UserTokenVerifier, role: Any) -> None:
    key = mint_api_key(secret=LOCAL_JWT_SECRET, role=role)
    exc = reject(verifier, f"Bearer {key}", "API keys")
    assert "not user tokens" in exc.detail


def test_service_role_with_user_claims_is_still_not_a_user(verifier: UserTokenVerifier) -> None:
    reject(verifier, "Bearer " + hs256(claims(role="service_role")), "API keys")


def test_anonymous_user_is_403_unless_allowed(verifier: UserTokenVerifier) -> None:
    token = mint_user_token(
        secret=LOCAL_JWT_SECRET, supabase_url=LOCAL_SUPABASE_URL, is_anonymous=True
    )
    with pytest.raises(Forbidden, match="anonymous"):
        verifier.verify(f"Bearer {token}")
    allowing = UserTokenVerifier(
        supabase_url=LOCAL_SUPABASE_URL, jwt_secret=LOCAL_JWT_SECRET, allow_anonymous=True
    )
    user = allowing.verify(f"Bearer {token}")
    assert user.is_anonymous is True
    assert user.id == DEMO_USER_ID


def test_non_boolean_is_anonymous_is_401(verifier: UserTokenVerifier) -> None:
    reject(verifier, "Bearer " + hs256(claims(is_anonymous="false")), "is_anonymous")


# --- signatures and algorithms --------------------------------------------------------------


@pytest.mark.parametrize(
    "alg", ["none", "None", "NONE", "HS384", "HS512", "RS512", "PS256", "ES384", "EdDSA", ""]
)
def test_algorithms_outside_the_allow_list_are_401(verifier: UserTokenVerifier, alg: str) -> None:
    token = f"{b64json({'alg': alg, 'typ': 'JWT'})}.{b64json(claims())}."
    reject(verifier, f"Bearer {token}", "algorithm is not allowed")


def test_unsigned_token_with_a_bogus_signature_is_401(verifier: UserTokenVerifier) -> None:
    token = f"{b64json({'alg': 'none'})}.{b64json(claims())}.{b64(b'x' * 32)}"
    reject(verifier, f"Bearer {token}", "algorithm is not allowed")


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_hs256_signed_with_the_public_key_is_401(
    verifier: UserTokenVerifier, keys: Keys, alg: str
) -> None:
    kid = "ec-kid" if alg == "ES256" else "rsa-kid"
    signing_input = f"{b64json({'alg': 'HS256', 'typ': 'JWT', 'kid': kid})}.{b64json(claims())}"
    for secret in (keys.public_pem(alg), json.dumps(keys.jwks).encode()):
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        token = f"{signing_input}.{b64(mac)}"
        reject(verifier, f"Bearer {token}", "signature is invalid")
        no_secret = UserTokenVerifier(
            supabase_url=LOCAL_SUPABASE_URL, jwt_secret=None, jwks=verifier.key_set
        )
        reject(no_secret, f"Bearer {token}", "HS256 tokens are not accepted")


def test_hs256_signed_with_another_secret_is_401(verifier: UserTokenVerifier) -> None:
    token = hs256(claims(), secret="another-secret-that-is-at-least-32-bytes-long")
    reject(verifier, f"Bearer {token}", "signature is invalid")


@pytest.mark.parametrize("alg", ["HS256", "ES256", "RS256"])
def test_tampered_payload_is_401(verifier: UserTokenVerifier, keys: Keys, alg: str) -> None:
    good = hs256(claims()) if alg == "HS256" else keys.sign(claims(), alg)
    head, _, sig = good.split(".")
    forged = claims(sub=str(uuid.uuid4()))
    reject(verifier, f"Bearer {head}.{b64json(forged)}.{sig}", "signature is invalid")


def test_unknown_kid_is_401(verifier: UserTokenVerifier, keys: Keys) -> None:
    token = keys.sign(claims(), "ES256", kid="rotated-away")
    reject(verifier, f"Bearer {token}", "unknown signing key")


def test_missing_kid_is_401(verifier: UserTokenVerifier, keys: Keys) -> None:
    token = jwt.encode(claims(), keys.ec, algorithm="ES256")
    reject(verifier, f"Bearer {token}", r"no signing key \(kid\)")


def test_algorithm_must_match_the_key_type(verifier: UserTokenVerifier, keys: Keys) -> None:
    token = keys.sign(claims(), "RS256", kid="ec-kid")  # RS256 token naming the EC key
    reject(verifier, f"Bearer {token}", "does not match its signing key")


def test_signature_by_a_foreign_key_under_a_known_kid_is_401(verifier: UserTokenVerifier) -> None:
    foreign = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(claims(), foreign, algorithm="ES256", headers={"kid": "ec-kid"})
    reject(verifier, f"Bearer {token}", "signature is invalid")


def test_asymmetric_token_when_keys_are_unreachable_is_503(keys: Keys) -> None:
    def down(url: str, timeout: float) -> bytes:
        raise TimeoutError

    v = UserTokenVerifier(
        supabase_url=LOCAL_SUPABASE_URL, jwt_secret=None, jwks=JwksCache("http://x", fetch=down)
    )
    token = jwt.encode(claims(), keys.ec, algorithm="ES256", headers={"kid": "ec-kid"})
    with pytest.raises(KeySetUnavailable) as info:
        v.verify(f"Bearer {token}")
    assert info.value.status == 503


def test_short_secret_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        UserTokenVerifier(supabase_url=LOCAL_SUPABASE_URL, jwt_secret="short")
