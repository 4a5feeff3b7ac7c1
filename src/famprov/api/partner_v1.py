"""The v1 partner endpoint, wire-compatible with the vendor's API."""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from famprov.errors import DuplicateParameterError, InvalidRequestError
from famprov.licenses.fields import PARAMETERS
from famprov.licenses.service import GrantService, vault_url

MAX_PARAMETERS = 32


def parse_query(raw: bytes) -> dict[str, str]:
    """Decode the query string strictly, refusing a repeated parameter.

    Values arrive raw or percent-encoded, and must be UTF-8 either way; ``+``
    means a space, as in every form encoding.
    """
    try:
        pairs = parse_qsl(
            raw.decode("latin-1"),
            keep_blank_values=True,
            encoding="latin-1",
            max_num_fields=MAX_PARAMETERS,
        )
        decoded = [
            (k.encode("latin-1").decode(), v.encode("latin-1").decode())
            for k, v in pairs
        ]
    except UnicodeDecodeError:
        raise InvalidRequestError(
            "Invalid request - Parameters must be UTF-8"
        ) from None
    except ValueError:
        raise InvalidRequestError("Invalid request - Too many parameters") from None
    params: dict[str, str] = {}
    for name, value in decoded:
        if name in PARAMETERS:
            if name in params:
                raise DuplicateParameterError(name)
            params[name] = value
    return params


async def create_license(request: Request) -> Response:
    if request.method != "GET":
        # HEAD is GET without a body, and a GET here grants a license.
        raise HTTPException(405, headers={"Allow": "GET"})
    service: GrantService = request.app.state.grants
    params = parse_query(request.scope["query_string"])
    grant = await service.grant(params)
    request.state.outcome = "replayed" if grant.replayed else "granted"
    return JSONResponse(
        {
            "success": True,
            "order_number": grant.order_number,
            "vault_url": vault_url(
                request.app.state.settings.public_url, grant.vault_token
            ),
        }
    )
