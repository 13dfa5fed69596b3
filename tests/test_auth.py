"""JWTs for Upbit's private WebSocket and REST: claims, algorithms, and no leaked secrets."""

from __future__ import annotations

import hashlib
import uuid

import jwt
import pytest

from feedhandler.upbit import Credentials, authorization_header, make_jwt
from feedhandler.upbit.auth import query_hash

# Shaped like Upbit keys (40 characters); long enough that PyJWT does not warn for HS512.
ACCESS = "aKx1Vq8bN3mP0rT5uW7yZ9cE2gH4jL6nQ8sU0wYb"
SECRET = "sK3cR3tV4lU3-" + "x" * 51


def claims(token: str, algorithm: str = "HS512") -> dict[str, str]:
    return jwt.decode(token, SECRET, algorithms=[algorithm])


def test_websocket_token_has_access_key_and_nonce_only() -> None:
    creds = Credentials(ACCESS, SECRET)
    token = make_jwt(creds)
    assert jwt.get_unverified_header(token) == {"alg": "HS512", "typ": "JWT"}
    payload = claims(token)
    assert set(payload) == {"access_key", "nonce"}
    assert payload["access_key"] == ACCESS
    assert uuid.UUID(payload["nonce"]).version == 4
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, SECRET + "!", algorithms=["HS512"])


def test_each_token_has_a_fresh_nonce() -> None:
    creds = Credentials(ACCESS, SECRET)
    nonces = {claims(make_jwt(creds))["nonce"] for _ in range(50)}
    assert len(nonces) == 50
    assert claims(make_jwt(creds, nonce="fixed"))["nonce"] == "fixed"


def test_query_hash_is_sha512_of_the_unencoded_query() -> None:
    query = "market=KRW-BTC&side=bid&volume=0.01&price=100&ord_type=limit"
    payload = claims(make_jwt(Credentials(ACCESS, SECRET), query=query))
    assert payload["query_hash"] == hashlib.sha512(query.encode()).hexdigest()
    assert payload["query_hash"] == payload["query_hash"].lower()
    assert payload["query_hash_alg"] == "SHA512"
    # Known answer, independent of hashlib's use above.
    assert query_hash("") == (
        "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce"
        "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"
    )
    unicode_query = "states[]=wait&states[]=watch&identifier=주문-1"
    assert claims(make_jwt(Credentials(ACCESS, SECRET), query=unicode_query))["query_hash"] == (
        hashlib.sha512(unicode_query.encode("utf-8")).hexdigest()
    )


def test_hs256_option_and_unsupported_algorithms() -> None:
    token = make_jwt(Credentials(ACCESS, SECRET), algorithm="HS256")
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert claims(token, "HS256")["access_key"] == ACCESS
    for algorithm in ("none", "RS256", "hs512", ""):
        with pytest.raises(ValueError, match="unsupported JWT algorithm") as caught:
            make_jwt(Credentials(ACCESS, SECRET), algorithm=algorithm)
        assert SECRET not in str(caught.value)


def test_authorization_header() -> None:
    header = authorization_header(Credentials(ACCESS, SECRET), query="a=1")
    assert list(header) == ["Authorization"]
    scheme, token = header["Authorization"].split(" ")
    assert scheme == "Bearer"
    assert claims(token)["query_hash"] == hashlib.sha512(b"a=1").hexdigest()


def test_credentials_are_masked() -> None:
    creds = Credentials(ACCESS, SECRET)
    for text in (repr(creds), str(creds), f"{creds}", f"{creds!r}", repr([creds])):
        assert ACCESS not in text and SECRET not in text
        assert "***" in text


def test_errors_never_carry_the_secret() -> None:
    # PyJWT refuses an HMAC secret that looks like a public key; the message must not echo it.
    pem_secret = (
        "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----"
    )
    creds = Credentials(ACCESS, pem_secret)
    with pytest.raises(ValueError, match="could not sign") as caught:
        make_jwt(creds)
    assert pem_secret not in str(caught.value) and "MFkw" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    with pytest.raises(TypeError) as type_error:
        make_jwt(creds, query=b"a=1")  # type: ignore[arg-type]
    assert "MFkw" not in str(type_error.value)
    with pytest.raises(TypeError):
        make_jwt((ACCESS, SECRET))  # type: ignore[arg-type]
    with pytest.raises(ValueError) as empty:
        Credentials(ACCESS, "")
    assert ACCESS not in str(empty.value)
