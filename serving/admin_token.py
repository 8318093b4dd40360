"""The admin bearer token: read once at start-up, checked on each request that needs it.

One token file (``--admin-token-file``) or the environment variable ``TUNESTACK_ROUTER_ADMIN_TOKEN`` holds
the tokens, one a line: ``NAME:SECRET`` (the name stamps the audit log) or a bare ``SECRET`` (named
``admin``). The router's admin API checks a request with ``bearer_name``, and so does the live page's data
(``page_token: true`` in the experiment file) on the router and on ``python -m serving page``: the same
header, the same answers (401 without the token or with a wrong one, 403 when no token was set).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from pathlib import Path

TOKEN_ENV = "TUNESTACK_ROUTER_ADMIN_TOKEN"
"""The environment variable read when no token file is given."""


class TokenRefused(Exception):
    """A request without the bearer token, or with a wrong one (401)."""

    status_code = 401


class AdminDisabled(TokenRefused):
    """A request that needs the token to a server started without one (403)."""

    status_code = 403


def read_token(token_file: str | Path | None) -> str | None:
    """The token text from ``token_file``, else from ``$TUNESTACK_ROUTER_ADMIN_TOKEN``; None when neither is set.
    An empty file is a usage error (``SystemExit``): read it in a command's start-up."""
    if token_file:
        token = Path(token_file).read_text().strip()
        if not token:
            raise SystemExit(f"error: admin token file {token_file} is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


def parse_tokens(text: str) -> dict[str, str]:
    """Admin tokens, one a line: ``NAME:SECRET`` (the name stamps the audit log), or a bare ``SECRET``
    (named ``admin``). Blank lines and ``#`` comments are skipped."""
    tokens: dict[str, str] = {}
    for i, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, secret = line.partition(":")
        name, secret = (name.strip(), secret.strip()) if sep else ("admin", line)
        if not name or not secret:
            raise ValueError(f"admin token line {i} must be NAME:SECRET or SECRET, got an empty name or secret")
        if name in tokens:
            raise ValueError(f"admin token line {i}: the name {name!r} is used twice; names must be unique")
        tokens[name] = secret
    if not tokens:
        raise ValueError("the admin token text holds no token")
    return tokens


def bearer_name(tokens: Mapping[str, str] | None, authorization: str) -> str:
    """The name of the token an ``Authorization: Bearer <token>`` header value carries, compared in constant
    time; raises ``AdminDisabled`` when ``tokens`` is None (no token was set), ``TokenRefused`` when the header
    is missing or the token wrong."""
    if tokens is None:
        raise AdminDisabled(f"the admin API is disabled: start the server with --admin-token-file or ${TOKEN_ENV}")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenRefused("missing admin token: send the header 'Authorization: Bearer <token>'")
    names = [name for name, secret in tokens.items() if hmac.compare_digest(token.strip().encode(), secret.encode())]
    if not names:
        raise TokenRefused("wrong admin token")
    return names[0]
