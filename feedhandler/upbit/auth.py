"""Upbit API credentials and the JWTs that authenticate with them.

Secrets never appear in a repr, a log line or an error message: :class:`Credentials`
masks them, and nothing here formats a token into text other than the header itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

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
