"""Upbit API credentials and the JWTs that authenticate with them.

Secrets never appear in a repr, a log line or an error message: :class:`Credentials`
masks them, and nothing here formats a token into text other than the header itself.
"""

from __future__ import annotations

import hashlib
import os
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Upbit issues the secret keys and their length is theirs to choose (shorter than the
# 64 bytes PyJWT recommends for HS512); warning every user about it helps no one. Matched
# by text, so that PyJWT is imported only by processes that sign tokens.
warnings.filterwarnings("ignore", message="The HMAC key is .* bytes long")

ACCESS_KEY_ENV = "UPBIT_ACCESS_KEY"
SECRET_KEY_ENV = "UPBIT_SECRET_KEY"


@dataclass(frozen=True, slots=True)
class Credentials:
    """An access key and secret key pair; both are masked in repr and str."""

    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self.access_key or not self.secret_key:
            raise ValueError("both the access key and the secret key must be non-empty")

    def __repr__(self) -> str:
        return "Credentials(access_key=***, secret_key=***)"

    __str__ = __repr__

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Credentials | None:
        """Credentials from UPBIT_ACCESS_KEY / UPBIT_SECRET_KEY, or None when unset.

        One of the two without the other is a configuration error.
        """
        env = os.environ if environ is None else environ
        access = env.get(ACCESS_KEY_ENV, "")
        secret = env.get(SECRET_KEY_ENV, "")
        if not access and not secret:
            return None
        if not access or not secret:
            missing = ACCESS_KEY_ENV if not access else SECRET_KEY_ENV
            raise ValueError(f"{missing} is not set while the other API key variable is")
        return cls(access, secret)


JWT_ALGORITHMS = ("HS512", "HS256")


def query_hash(query: str) -> str:
    """Lower-case hex SHA-512 of a non-URL-encoded query string (``a=1&b=2``)."""
    return hashlib.sha512(query.encode("utf-8")).hexdigest()


def make_jwt(
    credentials: Credentials,
    *,
    algorithm: str = "HS512",
    query: str | None = None,
    nonce: str | None = None,
) -> str:
    """A signed JWT for Upbit: access key, a fresh nonce, and the query hash if any.

    ``query`` is the exact ``key=value&...`` text the request sends (not URL-encoded);
    its SHA-512 goes in ``query_hash`` with ``query_hash_alg = "SHA512"``. ``nonce``
    defaults to a new UUID4 per call. Errors never carry the key or the token.
    """
    if algorithm not in JWT_ALGORITHMS:
        raise ValueError(
            f"unsupported JWT algorithm {algorithm!r}; expected one of {', '.join(JWT_ALGORITHMS)}"
        )
    if not isinstance(credentials, Credentials):
        raise TypeError(f"credentials must be Credentials, not {type(credentials).__name__}")
    payload: dict[str, str] = {
        "access_key": credentials.access_key,
        "nonce": str(uuid.uuid4()) if nonce is None else nonce,
    }
    if query is not None:
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, not {type(query).__name__}")
        payload["query_hash"] = query_hash(query)
        payload["query_hash_alg"] = "SHA512"
    import jwt  # noqa: PLC0415 - ~2 MB, needed only with API keys

    try:
        return jwt.encode(payload, credentials.secret_key, algorithm=algorithm)
    except (jwt.PyJWTError, TypeError, ValueError) as exc:
        # The exception text of a signing library may quote its inputs: keep only the type.
        raise ValueError(f"could not sign the JWT ({type(exc).__name__})") from None


def authorization_header(credentials: Credentials, **kwargs: Any) -> dict[str, str]:
    """``{"Authorization": "Bearer <jwt>"}``; keyword arguments go to :func:`make_jwt`."""
    return {"Authorization": f"Bearer {make_jwt(credentials, **kwargs)}"}
