"""The ceiling of the HTTP stack: a trivial Starlette app answering the
partner path with a constant body, on the same uvicorn setup as famprov."""

from __future__ import annotations

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

BODY = {"success": True, "order_number": "12345678-1234", "vault_url": "http://x/"}


async def constant(request: Request) -> Response:
    return JSONResponse(BODY)


app = Starlette(routes=[Route("/bi_api/v1/services/partner/create-license", constant)])

if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        access_log=False,
        log_level="warning",
        server_header=False,
        ws="none",
    )
