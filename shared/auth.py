"""Who is calling: Supabase user JWTs for the public routes, a shared credential for internal ones.

User tokens are verified here (HTTP API JWT authorizers accept RSA keys only),
then forwarded to PostgREST unchanged so RLS decides what the user sees.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from functools import cache
from typing import Any

import jwt

from shared.errors import ApiError, unauthorized
from shared.settings import settings

ASYMMETRIC = ("ES256", "RS256")


@dataclass(frozen=True)
class User:
    id: str
    token: str
    claims: dict[str, Any]


@cache
def _jwks() -> jwt.PyJWKClient:
    """Cached keys; PyJWKClient refetches the set when a token names an unknown kid."""
    return jwt.PyJWKClient(settings().jwks_url, cache_keys=True, lifespan=600, timeout=5)


def bearer_token(headers: dict[str, str] | None) -> str:
    value = (headers or {}).get("authorization") or (headers or {}).get("Authorization") or ""
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("missing bearer token")
    return token.strip()


def _key_for(token: str, alg: str) -> Any:
    if alg == "HS256":
        if not settings().jwt_secret:
            raise unauthorized("HS256 tokens are not accepted by this deployment")
        return settings().jwt_secret
    if alg in ASYMMETRIC:
        try:
            return _jwks().get_signing_key_from_jwt(token).key
        except jwt.PyJWKClientConnectionError as exc:
            raise ApiError(503, "auth_unavailable", "cannot fetch the signing keys") from exc
        except jwt.PyJWKClientError as exc:
            raise unauthorized("token signed by an unknown key") from exc
    raise unauthorized(f"unsupported token algorithm {alg!r}")


def verify_user(headers: dict[str, str] | None) -> User:
    """A valid, unexpired `authenticated` token with a subject, or a 401."""
    token = bearer_token(headers)
    try:
        alg = str(jwt.get_unverified_header(token).get("alg", ""))
    except jwt.InvalidTokenError as exc:
        raise unauthorized("malformed token") from exc
    key = _key_for(token, alg)
    try:
        claims = jwt.decode(
            token, key, algorithms=[alg], audience="authenticated",
            leeway=settings().jwt_leeway_s, options={"require": ["exp", "sub"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise unauthorized("token expired") from exc
    except jwt.InvalidTokenError as exc:
        raise unauthorized(f"invalid token: {exc}") from exc
    return User(id=str(claims["sub"]), token=token, claims=claims)


def verify_internal(headers: dict[str, str] | None) -> None:
    """The orchestrator and executors accept only the deployment's internal credential."""
    expected = settings().internal_token
    token = bearer_token(headers)
    if not expected or not hmac.compare_digest(token.encode(), expected.encode()):
        raise unauthorized("invalid internal credential")
