"""Google OIDC tokens as Pub/Sub push and Cloud Scheduler send them (and our emulator does)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from genjobs.auth import JwksCache, ServiceIdentity, ServiceTokenVerifier
from genjobs.errors import ConfigurationError, Forbidden, Unauthenticated
from genjobs.settings import LOCAL_JWT_SECRET
from tests.jwks_server import JwksServer

PUSH_EMAIL = "pubsub-push@local-project.iam.gserviceaccount.com"
AUDIENCE = "http://127.0.0.1:8081/"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def server(key: rsa.RSAPrivateKey) -> Iterator[JwksServer]:
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    srv = JwksServer({"keys": [{**jwk, "kid": "emulator-1", "alg": "RS256", "use": "sig"}]})
    yield srv
    srv.close()


@pytest.fixture
def verifier(server: JwksServer) -> ServiceTokenVerifier:
    return ServiceTokenVerifier(
        audience=AUDIENCE, allowed_emails=[PUSH_EMAIL], certs_url=server.certs_url
    )


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": "https://accounts.google.com",
        "aud": AUDIENCE,
        "azp": "107346745396512305071",
        "sub": "107346745396512305071",
        "email": PUSH_EMAIL,
        "email_verified": True,
        "iat": now,
        "exp": now + 3600,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: Any, payload: dict[str, Any], kid: str = "emulator-1", alg: str = "RS256") -> str:
    return "Bearer " + jwt.encode(payload, key, algorithm=alg, headers={"kid": kid})


def reject(verifier: ServiceTokenVerifier, header: str | None, match: str) -> None:
    with pytest.raises(Unauthenticated, match=match) as info:
        verifier.verify(header)
    assert info.value.status == 401
    www = info.value.headers()["WWW-Authenticate"]
    assert www.startswith('Bearer realm="genjobs-internal"')
    if header:
        assert header.split(" ", 1)[-1] not in str(info.value) + www


def test_good_token_gives_the_service_identity(
    verifier: ServiceTokenVerifier, key: rsa.RSAPrivateKey
) -> None:
    identity = verifier.verify(sign(key, claims()))
    assert identity == ServiceIdentity(email=PUSH_EMAIL, subject="107346745396512305071")


@pytest.mark.parametrize("iss", ["https://accounts.google.com", "accounts.google.com"])
def test_both_google_issuer_spellings(
    verifier: ServiceTokenVerifier, key: rsa.RSAPrivateKey, iss: str
) -> None:
    assert verifier.verify(sign(key, claims(iss=iss))).email == PUSH_EMAIL


def test_audience_may_be_one_of_several(server: JwksServer, key: rsa.RSAPrivateKey) -> None:
    v = ServiceTokenVerifier(
        audience=["https://worker-abc.a.run.app", AUDIENCE],
        allowed_emails=[PUSH_EMAIL.upper()],
        certs_url=server.certs_url,
    )
    assert v.verify(sign(key, claims())).email == PUSH_EMAIL


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (None, "missing Authorization header"),
        ("", "empty"),
        ("Basic Zm9vOmJhcg==", "scheme must be Bearer"),
        ("Bearer nonsense", "not a JWT"),
    ],
)
def test_missing_or_malformed_is_401(
    verifier: ServiceTokenVerifier, header: str | None, match: str
) -> None:
    reject(verifier, header, match)


def test_wrong_audience_is_401(verifier: ServiceTokenVerifier, key: rsa.RSAPrivateKey) -> None:
    reject(verifier, sign(key, claims(aud="http://127.0.0.1:8082/")), "audience")


def test_expired_is_401(verifier: ServiceTokenVerifier, key: rsa.RSAPrivateKey) -> None:
    now = int(time.time())
    reject(verifier, sign(key, claims(iat=now - 7200, exp=now - 3600)), "expired")


@pytest.mark.parametrize("missing", ["exp", "iat", "aud", "iss", "sub"])
def test_required_claims(
    verifier: ServiceTokenVerifier, key: rsa.RSAPrivateKey, missing: str
) -> None:
    payload = claims()
    del payload[missing]
    reject(verifier, sign(key, payload), f"missing the '{missing}' claim")


def test_other_issuer_is_401(verifier: ServiceTokenVerifier, key: rsa.RSAPrivateKey) -> None:
    reject(verifier, sign(key, claims(iss="https://evil.example.com")), "issuer")


def test_unknown_key_is_401(verifier: ServiceTokenVerifier) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    reject(verifier, sign(other, claims(), kid="attacker-1"), "unknown signing key")
    reject(verifier, sign(other, claims(), kid="emulator-1"), "signature is invalid")


@pytest.mark.parametrize("alg", ["HS256", "ES256", "none"])
def test_only_rs256_is_accepted(verifier: ServiceTokenVerifier, alg: str) -> None:
    if alg == "HS256":
        header = sign(LOCAL_JWT_SECRET, claims(), alg=alg)
    elif alg == "ES256":
        header = sign(ec.generate_private_key(ec.SECP256R1()), claims(), alg=alg)
    else:
        header = "Bearer " + jwt.encode(claims(), "", algorithm="none")
    reject(verifier, header, "RS256 only")


@pytest.mark.parametrize("email", ["someone@evil.iam.gserviceaccount.com", None, 42])
def test_other_service_account_is_403(
    verifier: ServiceTokenVerifier, key: rsa.RSAPrivateKey, email: Any
) -> None:
    with pytest.raises(Forbidden, match="may not call") as info:
        verifier.verify(sign(key, claims(email=email)))
    assert info.value.status == 403


@pytest.mark.parametrize("verified", [False, "false", None])
def test_unverified_email_is_403(
    verifier: ServiceTokenVerifier, key: rsa.RSAPrivateKey, verified: Any
) -> None:
    with pytest.raises(Forbidden, match="not verified"):
        verifier.verify(sign(key, claims(email_verified=verified)))


def test_shared_key_cache_is_used(server: JwksServer, key: rsa.RSAPrivateKey) -> None:
    fetched: list[str] = []

    def fetch(url: str, timeout: float) -> bytes:
        fetched.append(url)
        return json.dumps(server.jwks).encode()

    v = ServiceTokenVerifier(
        audience=AUDIENCE, allowed_emails=[PUSH_EMAIL], jwks=JwksCache("http://certs", fetch=fetch)
    )
    for _ in range(3):
        v.verify(sign(key, claims()))
    assert fetched == ["http://certs"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"audience": "", "allowed_emails": [PUSH_EMAIL]},
        {"audience": [], "allowed_emails": [PUSH_EMAIL]},
        {"audience": AUDIENCE, "allowed_emails": []},
        {"audience": AUDIENCE, "allowed_emails": [" "]},
        {"audience": AUDIENCE, "allowed_emails": [PUSH_EMAIL], "issuers": []},
    ],
)
def test_misconfiguration_fails_fast(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        ServiceTokenVerifier(**kwargs)


def unsigned(authorization: str) -> str:
    """As Cloud Run forwards a token after its invoker check verified it."""
    return authorization.rpartition(".")[0] + ".SIGNATURE_REMOVED_BY_GOOGLE"


@pytest.fixture
def behind_cloud_run(server: JwksServer) -> ServiceTokenVerifier:
    return ServiceTokenVerifier(
        audience=AUDIENCE,
        allowed_emails=[PUSH_EMAIL],
        certs_url=server.certs_url,
        platform_checked=True,
    )


def test_unsigned_token_is_refused_unless_the_platform_checked_it(
    verifier: ServiceTokenVerifier, key: rsa.RSAPrivateKey
) -> None:
    with pytest.raises(Unauthenticated, match="token is not signed"):
        verifier.verify(unsigned(sign(key, claims())))


def test_behind_cloud_run_the_claims_of_an_unsigned_token_decide(
    behind_cloud_run: ServiceTokenVerifier, key: rsa.RSAPrivateKey
) -> None:
    identity = behind_cloud_run.verify(unsigned(sign(key, claims())))
    assert identity.email == PUSH_EMAIL
    with pytest.raises(Unauthenticated, match="audience"):
        behind_cloud_run.verify(unsigned(sign(key, claims(aud="https://other.example/"))))
    with pytest.raises(Unauthenticated, match="expired"):
        behind_cloud_run.verify(unsigned(sign(key, claims(exp=int(time.time()) - 300))))
    with pytest.raises(Unauthenticated, match="issuer"):
        behind_cloud_run.verify(unsigned(sign(key, claims(iss="https://evil.example"))))
    with pytest.raises(Forbidden):
        behind_cloud_run.verify(unsigned(sign(key, claims(email="x@evil.example"))))
    with pytest.raises(Forbidden):
        behind_cloud_run.verify(unsigned(sign(key, claims(email_verified=False))))


def test_behind_cloud_run_a_signed_token_is_still_verified_in_full(
    behind_cloud_run: ServiceTokenVerifier, key: rsa.RSAPrivateKey
) -> None:
    assert behind_cloud_run.verify(sign(key, claims())).email == PUSH_EMAIL
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(Unauthenticated):
        behind_cloud_run.verify(sign(stranger, claims()))
    with pytest.raises(Unauthenticated, match="algorithm"):
        behind_cloud_run.verify(unsigned(sign(LOCAL_JWT_SECRET, claims(), alg="HS256")))
