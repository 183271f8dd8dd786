"""Who is calling: Supabase user JWTs for the public routes, a shared credential for internal ones.

User tokens are verified here (HTTP API JWT authorizers accept RSA keys only).
Any token that fails verification, in any way, is a 401 `invalid_token`: the
caller learns what was wrong, the logs never see a traceback for it.
"""

from __future__ import annotations

import hmac
import time
import uuid
from dataclasses import dataclass
from functools import cache
from typing import Any

import jwt

from shared.errors import ApiError, invalid_token, unauthorized
from shared.settings import settings

ASYMMETRIC = ("ES256", "RS256")
# User routes serve signed-in users only: an anon token has no user, and a
# service-role or database-role token is no user's.
USER_ROLE = "authenticated"


@dataclass(frozen=True)
class User:
    id: str
    token: str
    claims: dict[str, Any]


# A token naming a key the cached set lacks refetches the set at most this often, so
# forged kids cannot make every request wait on the JWKS endpoint.
JWKS_REFRESH_S = 60.0
_last_refresh = [0.0]


@cache
def _jwks() -> jwt.PyJWKClient:
    """The project's signing keys, cached for 10 minutes."""
    return jwt.PyJWKClient(settings().jwks_url, cache_keys=True, lifespan=600, timeout=5)


def _signing_key(kid: str) -> jwt.PyJWK:
    """The JWKS key named `kid`, refetching the set for an unknown one (rotation) at most
    once per JWKS_REFRESH_S. Only the header is read: the payload is still unverified."""
    client = _jwks()
    key = client.match_kid(client.get_signing_keys(), kid)
    if key is None and time.monotonic() - _last_refresh[0] > JWKS_REFRESH_S:
        _last_refresh[0] = time.monotonic()
        key = client.match_kid(client.get_signing_keys(refresh=True), kid)
    if key is None:
        raise invalid_token("token signed by an unknown key")
    return key


def bearer_token(headers: dict[str, str] | None) -> str:
    value = (headers or {}).get("authorization") or (headers or {}).get("Authorization") or ""
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("missing bearer token")
    return token.strip()


def _key_for(header: dict[str, Any], alg: str) -> Any:
    if alg == "HS256":
        if not settings().jwt_secret:
            raise invalid_token("HS256 tokens are not accepted by this deployment")
        return settings().jwt_secret
    if alg in ASYMMETRIC:
        try:
            signing_key = _signing_key(str(header.get("kid", "")))
        except jwt.PyJWKClientConnectionError as exc:
            raise ApiError(503, "auth_unavailable", "cannot fetch the signing keys") from exc
        except jwt.PyJWKClientError as exc:
            raise invalid_token("token signed by an unknown key") from exc
        if signing_key.algorithm_name != alg:
            # e.g. an RS256 header naming the EC key's kid: PyJWT would raise TypeError.
            raise invalid_token(f"token algorithm {alg} does not match its key")
        return signing_key.key
    raise invalid_token(f"unsupported token algorithm {alg!r}")


def _claims(token: str) -> dict[str, Any]:
    try:
        header = jwt.get_unverified_header(token)
    except (jwt.InvalidTokenError, RecursionError) as exc:  # e.g. a header nested 3,000 deep
        raise invalid_token("malformed token") from exc
    alg = str(header.get("alg", ""))
    key = _key_for(header, alg)
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key, algorithms=[alg], audience="authenticated",
            leeway=settings().jwt_leeway_s, options={"require": ["exp", "sub"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise invalid_token("token expired") from exc
    except jwt.InvalidTokenError as exc:
        raise invalid_token(f"invalid token: {exc}") from exc
    except Exception as exc:
        # type, a payload nested 3,000 deep, `exp: 1e400`) is still just an invalid token.
        raise invalid_token("token cannot be verified") from exc
    return claims


def verify_user(headers: dict[str, str] | None) -> User:
    """A valid, unexpired token of a signed-in user (role `authenticated`, a UUID subject)."""
    token = bearer_token(headers)
    claims = _claims(token)
    if claims.get("role") != USER_ROLE:
        raise invalid_token(f"token role must be {USER_ROLE!r}")
    subject = str(claims["sub"])
    try:
        user_id = str(uuid.UUID(subject))
    except ValueError:
        user_id = None
    if user_id is None or user_id != subject.lower():  # the plain form auth.uid() reads
        raise invalid_token("token subject is not a user id (a UUID)")
    return User(id=user_id, token=token, claims=claims)


@dataclass(frozen=True)
class Caller:
    """Whoever calls a route users and admins share: a user (their token and claims), or
    the service role (no user; admin of every tenant). What a caller may do is decided
    in SQL from `claims` (workflow.claims_*), never here."""

    user: User | None
    claims: dict[str, Any]

    @property
    def actor(self) -> str:
        return self.user.id if self.user else SERVICE_ROLE


SERVICE_ROLE = "service_role"


def verify_caller(headers: dict[str, str] | None) -> Caller:
    """A signed-in user, or a caller holding the service-role key (an admin)."""
    token = bearer_token(headers)
    expected = settings().service_role_key
    if expected and hmac.compare_digest(token.encode(), expected.encode()):
        return Caller(user=None, claims={"role": SERVICE_ROLE})
    user = verify_user(headers)
    return Caller(user=user, claims=user.claims)


def verify_internal(headers: dict[str, str] | None) -> None:
    """The orchestrator and executors accept only the deployment's internal credential."""
    expected = settings().internal_token
    token = bearer_token(headers)
    if not expected or not hmac.compare_digest(token.encode(), expected.encode()):
        raise unauthorized("invalid internal credential")


def holds_internal(headers: dict[str, str] | None) -> bool:
    """Whether the request carries the internal credential (GET /metrics takes it too)."""
    try:
        verify_internal(headers)
    except ApiError:
        return False
    return True
