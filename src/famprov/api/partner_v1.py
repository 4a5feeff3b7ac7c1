"""The v1 partner endpoint, wire-compatible with the vendor's API.

Every grant passes through here, so the endpoint is a plain ASGI app that
the service dispatches to before Starlette's routing and middleware (see
`famprov.api.app.FamprovApp`): those cost more per request than the
endpoint's own work. It renders its domain errors itself, with the statuses
and messages of the one registry in `famprov.api.errors`.
"""

from __future__ import annotations

import json
from urllib.parse import unquote_to_bytes

from starlette.types import Receive, Scope, Send

from famprov.api.errors import (
    HTTP_MESSAGES,
    failure_body,
    limit_headers,
    message_for,
    outcome_for,
    status_for,
)
from famprov.errors import (
    DuplicateParameterError,
    FamprovError,
    InvalidRequestError,
    RateLimitedError,
)
from famprov.licenses.fields import PARAMETERS
from famprov.licenses.recording import Grant
from famprov.licenses.service import GrantService, vault_url

PATHS = frozenset({"/bi_api/v1/services/partner/create-license", "/create-license"})
MAX_PARAMETERS = 32
_JSON = (b"content-type", b"application/json")


def parse_query(raw: bytes) -> dict[str, str]:
    """Decode the query string strictly, refusing a repeated parameter.

    The same reading as the standard library's ``parse_qsl``: pairs split on
    ``&``, ``+`` means a space, ``%XX`` a byte, and the bytes must be UTF-8.
    Parameters famprov does not know are skipped.
    """
    pieces = raw.split(b"&")
    if len(pieces) > MAX_PARAMETERS:
        raise InvalidRequestError("Invalid request - Too many parameters")
    params: dict[str, str] = {}
    try:
        for piece in pieces:
            if not piece:
                continue
            name, _, value = piece.partition(b"=")
            key = _NAMES.get(name) or _decode(name)
            if key not in PARAMETERS:
                continue
            if key in params:
                raise DuplicateParameterError(key)
            params[key] = _decode(value)
    except UnicodeDecodeError:
        raise InvalidRequestError(
            "Invalid request - Parameters must be UTF-8"
        ) from None
    return params


# The parameter names as they arrive, nearly always: no decoding needed.
_NAMES = {name.encode(): name for name in PARAMETERS}


def _decode(part: bytes) -> str:
    if b"%" in part or b"+" in part:
        part = unquote_to_bytes(part.replace(b"+", b" "))
    return part.decode()


class CreateLicense:
    """``GET /create-license``: grant one person a family plan."""

    def __init__(self) -> None:
        self._public_url = ""
        self._url_prefix = b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["state"]
        if scope["method"] != "GET":
            # HEAD is GET without a body, and a GET here grants a license.
            state["outcome"] = "method_not_allowed"
            await _answer(send, 405, failure_body(HTTP_MESSAGES[405]), _ALLOW_GET)
            return
        app_state = scope["app"].state
        service: GrantService = app_state.grants
        client = scope.get("client")
        try:
            grant, allowance = await service.grant(
                parse_query(scope["query_string"]), client[0] if client else None
            )
        except FamprovError as exc:
            state["outcome"] = outcome_for(exc)
            extra = limit_headers(exc) if isinstance(exc, RateLimitedError) else ()
            body = failure_body(message_for(exc))
            await _answer(send, status_for(exc), body, *extra)
            return
        state["outcome"] = "replayed" if grant.replayed else "granted"
        body = self._success(app_state.settings.public_url, grant)
        if allowance is None:
            await _answer(send, 200, body)
            return
        # The partner's rate and what is left of it (the draft allows the
        # fields on any answer), so that a client can pace itself before a
        # 429; measured at about 0.25 µs a grant.
        policy = allowance.policy
        await _answer(
            send,
            200,
            body,
            (b"ratelimit-policy", policy.header),
            (b"ratelimit", policy.state(allowance.remaining, allowance.window)),
        )

    def _success(self, public_url: str, grant: Grant) -> bytes:
        if public_url != self._public_url:
            # The vault URL's prefix, JSON-encoded once: order numbers and
            # tokens are plain ASCII that JSON leaves as it is.
            prefix = json.dumps(vault_url(public_url, ""))[:-1]
            self._url_prefix = b'","vault_url":' + prefix.encode()
            self._public_url = public_url
        return b"".join(
            (
                b'{"success":true,"order_number":"',
                grant.order_number.encode(),
                self._url_prefix,
                grant.vault_token.encode(),
                b'"}',
            )
        )


_ALLOW_GET = (b"allow", b"GET")


async def _answer(
    send: Send, status: int, body: bytes, *extra: tuple[bytes, bytes]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [_JSON, (b"content-length", b"%d" % len(body)), *extra],
        }
    )
    await send({"type": "http.response.body", "body": body})


create_license = CreateLicense()
