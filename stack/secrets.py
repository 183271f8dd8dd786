"""Local keys, generated once per state folder and never committed.

The shapes match a Supabase project: an HS256 JWT secret that signs the anon and
service-role keys, an asymmetric (ES256) signing key published as a JWKS, a
database password, and the internal credential the engine's functions share.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

TEN_YEARS = 10 * 365 * 24 * 3600


@dataclass(frozen=True)
class StackSecrets:
    jwt_secret: str
    es256_private_pem: str
    es256_kid: str
    anon_key: str
    service_role_key: str
    internal_token: str
    db_password: str
    authenticator_password: str
    webhook_secret: str

    def es256_private_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.es256_private_pem.encode(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key

    def public_jwks(self) -> dict[str, Any]:
        """What /auth/v1/.well-known/jwks.json serves: public keys only, like Supabase."""
        jwk = json.loads(ECAlgorithm.to_jwk(self.es256_private_key().public_key()))
        jwk.update({"kid": self.es256_kid, "alg": "ES256", "use": "sig", "key_ops": ["verify"]})
        return {"keys": [jwk]}

    def postgrest_jwks(self) -> dict[str, Any]:
        """PostgREST verifies both the legacy HS256 secret and the ES256 key."""
        oct_key = {
            "kty": "oct",
            "k": jwt.utils.base64url_encode(self.jwt_secret.encode()).decode(),
            "alg": "HS256",
        }
        return {"keys": [oct_key, *self.public_jwks()["keys"]]}


def _api_key(secret: str, role: str) -> str:
    now = int(time.time())
    claims = {"iss": "supabase-local", "role": role, "iat": now, "exp": now + TEN_YEARS}
    return jwt.encode(claims, secret, algorithm="HS256")


def generate() -> StackSecrets:
    jwt_secret = secrets.token_urlsafe(48)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return StackSecrets(
        jwt_secret=jwt_secret,
        es256_private_pem=pem,
        es256_kid=secrets.token_hex(8),
        anon_key=_api_key(jwt_secret, "anon"),
        service_role_key=_api_key(jwt_secret, "service_role"),
        internal_token=secrets.token_urlsafe(32),
        db_password=secrets.token_urlsafe(24),
        authenticator_password=secrets.token_urlsafe(24),
        webhook_secret=secrets.token_urlsafe(32),
    )


def load_or_create(path: Path) -> StackSecrets:
    """Keys survive restarts; a key added by a newer version is generated once."""
    stored = json.loads(path.read_text()) if path.exists() else {}
    fresh = generate().__dict__
    if stored and set(fresh) <= set(stored):
        return StackSecrets(**{k: stored[k] for k in fresh})
    path.parent.mkdir(parents=True, exist_ok=True)
    created = StackSecrets(**{**fresh, **{k: v for k, v in stored.items() if k in fresh}})
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(created.__dict__, handle, indent=2)
    tmp.replace(path)
    return created


def load(path: Path) -> StackSecrets:
    if not path.exists():
        raise SystemExit(f"no local keys at {path}: start the stack first (make up)")
    return load_or_create(path)
