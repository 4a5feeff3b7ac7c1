"""The v1 partner endpoint, wire-compatible with the vendor's API.

It is a plain ASGI endpoint rather than a Starlette request handler: every
grant passes through here, and the request and response objects cost more
than the little this needs of them.
"""

from __future__ import annotations

import json
from urllib.parse import unquote_to_bytes

from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from famprov.errors import DuplicateParameterError, InvalidRequestError
from famprov.licenses.fields import PARAMETERS
from famprov.licenses.service import GrantService, vault_url

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
            key = _decode(name)
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


def _decode(part: bytes) -> str:
    if b"%" in part or b"+" in part:
        part = unquote_to_bytes(part.replace(b"+", b" "))
    return part.decode()


class CreateLicense:
    """``GET /create-license``: grant one person a family plan."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "GET":
            # HEAD is GET without a body, and a GET here grants a license.
            raise HTTPException(405, headers={"Allow": "GET"})
        state = scope["app"].state
        service: GrantService = state.grants
        grant = await service.grant(parse_query(scope["query_string"]))
        scope["state"]["outcome"] = "replayed" if grant.replayed else "granted"
        body = json.dumps(
            {
                "success": True,
                "order_number": grant.order_number,
                "vault_url": vault_url(state.settings.public_url, grant.vault_token),
            },
            separators=(",", ":"),
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [_JSON, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


create_license = CreateLicense()
