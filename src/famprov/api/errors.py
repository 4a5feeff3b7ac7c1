"""The one place where errors become HTTP answers.

Every answer that is not a success is JSON of the form
``{"success": false, "message": "..."}``, whatever raised it: a domain error
(`famprov.errors`) or a routing miss (404, 405) here; a bug becomes a 500
that shows no internals in `famprov.api.middleware`; a request too malformed
to reach the app is answered by `famprov.api.protocol`.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from famprov.errors import (
    ConflictError,
    FamprovError,
    InvalidRequestError,
    InvitationGoneError,
    NotFoundError,
    PartnerAuthError,
    QuotaExceededError,
    RateLimitedError,
)
from famprov.logs import log
from famprov.throttle.rates import retry_after

STATUS: dict[type[FamprovError], int] = {
    InvalidRequestError: 400,
    PartnerAuthError: 401,
    QuotaExceededError: 403,
    NotFoundError: 404,
    InvitationGoneError: 410,
    ConflictError: 409,
    RateLimitedError: 429,
}

HTTP_MESSAGES = {
    404: "Not found",
    403: "Forbidden",
    405: "Method not allowed",
    408: "Request head not received in time",
    413: "Request too large",
    414: "Request URI too long",
    431: "Request header fields too large",
    503: "Service unavailable",
}


def failure(
    status: int, message: str, headers: dict[str, str] | None = None
) -> Response:
    return JSONResponse({"success": False, "message": message}, status, headers)


def failure_body(message: str) -> bytes:
    """The body of `failure`, for the paths that write their answer raw."""
    return json.dumps(
        {"success": False, "message": message}, separators=(",", ":")
    ).encode()


def limit_headers(exc: RateLimitedError) -> list[tuple[bytes, bytes]]:
    """A 429's fields: when to come back, and the policy it is over, in the
    syntax of draft-ietf-httpapi-ratelimit-headers-11."""
    seconds = retry_after(exc.wait)
    policy = exc.policy
    return [
        (b"retry-after", b"%d" % seconds),
        (b"ratelimit-policy", policy.header),
        (b"ratelimit", policy.state(0, seconds)),
    ]


def status_for(exc: FamprovError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def message_for(exc: FamprovError) -> str:
    """What the caller reads: a refusal's own message, but for an error that
    has no status of its own (the service's fault, such as a store sealed
    with a key it lacks) the plain 500's: a 500 shows no internals. The
    operator reads the error's own message in the log."""
    if status_for(exc) != 500:
        return exc.message
    log.error("request_failed", error=type(exc).__name__, reason=exc.message)
    return HTTP_MESSAGES[500]


def outcome_for(exc: Exception) -> str:
    """A short name for the request log: ``PartnerAuthError`` -> ``partner_auth``."""
    name = type(exc).__name__.removesuffix("Error")
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


async def on_domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FamprovError)
    request.state.outcome = outcome_for(exc)
    headers = None
    if isinstance(exc, RateLimitedError):
        headers = {k.decode(): v.decode() for k, v in limit_headers(exc)}
    return failure(status_for(exc), message_for(exc), headers)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = HTTP_MESSAGES.get(exc.status_code, "Request failed")
    return failure(exc.status_code, message, dict(exc.headers or {}))


HANDLERS = {
    FamprovError: on_domain_error,
    HTTPException: on_http_error,
}
