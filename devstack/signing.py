"""Local stand-in for Google's token signing: one RSA key shared by the emulator and tools."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

GOOGLE_ISSUER = "https://accounts.google.com"


def load_or_create_key(path: Path) -> rsa.RSAPrivateKey:
    """The key in `path`, created (mode 0600) on first use."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise TypeError(f"{path} does not hold an RSA private key")
        return key
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return key


def key_id(key: rsa.RSAPrivateKey) -> str:
    """The emulator's `kid` for this key: SHA-1 of the public key, as in its JWKS."""
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha1(der, usedforsecurity=False).hexdigest()


def google_id_token(
    key: rsa.RSAPrivateKey, *, audience: str, email: str, ttl_seconds: int = 600
) -> str:
    """An ID token shaped like the ones Pub/Sub push and Cloud Scheduler send."""
    now = int(time.time())
    claims = {
        "iss": GOOGLE_ISSUER,
        "aud": audience,
        "azp": "1" * 21,
        "sub": "1" * 21,
        "email": email,
        "email_verified": True,
        "iat": now,
        "exp": now + ttl_seconds,
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": key_id(key)})
