"""The router's exceptions: one small hierarchy, each class carrying the HTTP status it maps to.

The HTTP layer (``serving.router.app``) turns any ``RouterError`` into a KServe v2 style
``{"error": "..."}`` JSON body with ``status_code``; nothing else needs to know about HTTP codes.
"""

from __future__ import annotations


class RouterError(Exception):
    """Base class: a request the router could not serve, with the status code to answer."""

    status_code = 500


class BadRequest(RouterError):
    """The caller's mistake: malformed JSON, missing inputs, an invalid admin payload (400)."""

    status_code = 400


class FieldError(BadRequest):
    """A bad value in a named field of the request (400); ``param`` names the field (OpenAI's error ``param``)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class Unauthorized(RouterError):
    """An admin request without the bearer token, or with a wrong one (401)."""

    status_code = 401


class Forbidden(RouterError):
    """The admin API is disabled because the router was started without a token (403)."""

    status_code = 403


class NotFound(RouterError):
    """An unknown experiment, or feedback for a request id the router does not know (404)."""

    status_code = 404


class Conflict(RouterError):
    """Feedback for a request id that already has feedback (409)."""

    status_code = 409


class PayloadTooLarge(RouterError):
    """A request body over the configured size limit (413)."""

    status_code = 413


class UpstreamError(RouterError):
    """Triton could not answer: connection refused, reset, or a 5xx (503)."""

    status_code = 503
    arm: str | None = None
    """The arm whose upstream failed last (set by ``routing.with_fallback``); None: not yet known."""


class UpstreamTimeout(UpstreamError):
    """Triton did not answer within the experiment's per-request timeout (504)."""

    status_code = 504


class UpstreamRejected(RouterError):
    """Triton answered with a 4xx for the request itself; its status and message are passed on."""

    def __init__(self, message: str, status_code: int):
        super().__init__(message)
        self.status_code = status_code

