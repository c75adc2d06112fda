"""Bearer-token auth of the HTTP service: one token, read from the environment, on every route but health.

The token is the value of ``$<serve.auth_token_env>`` where the cluster runs; an empty
``serve.auth_token_env`` serves without auth. A named but unset variable fails the deploy before
any replica starts (:func:`auth_token`), so a service meant to be private is never served open.
Comparison is constant-time. Left out: several tokens, scopes, rotation without a redeploy.
"""

from __future__ import annotations

import hmac
import os

from lmcot.config import Config, ConfigError
from lmcot.serving.errors import ApiError


def auth_token(cfg: Config) -> str:
    """The bearer token from ``$<serve.auth_token_env>``; '' when auth is off. Missing token: ConfigError."""
    name = cfg.serve.auth_token_env
    if not name:
        return ""
    token = os.environ.get(name, "")
    if not token:
        raise ConfigError(
            f"serve.auth_token_env={name!r} but ${name} is empty or unset: export it where the cluster runs "
            "(before `ray start`) or set serve.auth_token_env to '' to serve without auth"
        )
    return token


def check_bearer(headers, token: str) -> None:
    """Raise 401 unless ``headers`` carry ``Authorization: Bearer <token>`` (no-op when token is empty).

    >>> check_bearer({"authorization": "Bearer s3cret"}, "s3cret"), check_bearer({}, "")
    (None, None)
    >>> check_bearer({"authorization": "s3cret"}, "s3cret")
    Traceback (most recent call last):
    ...
    lmcot.serving.errors.ApiError: missing or wrong bearer token: send 'Authorization: Bearer <token>'
    """
    if not token:
        return
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
        raise ApiError(401, "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                       "authorization", {"WWW-Authenticate": "Bearer"}, code="invalid_api_key")
