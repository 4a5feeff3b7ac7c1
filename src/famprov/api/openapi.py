"""The partner API's OpenAPI definition, and the explorer that shows it.

The definition is one YAML file beside this module, read once per process:
``/openapi.yaml`` serves its bytes as written, ``/openapi.json`` the same
document as JSON, and ``famprov openapi`` prints either. ``/docs`` is Swagger
UI, served from files vendored into the package (``explorer/swagger-ui``), so
the page needs no other host.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

EXPLORER = Path(str(files("famprov.api") / "explorer"))

# The explorer's page runs only the scripts served beside it and talks only to
# this server: no inline script or style, nothing from another host. Swagger
# UI's icons are data: images; the styles it sets through the DOM are not
# inline styles in CSP's sense, so they need no exception.
EXPLORER_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)


@cache
def definition_yaml() -> str:
    """The definition as the file holds it."""
    return (files("famprov.api") / "openapi.yaml").read_text(encoding="utf-8")


@cache
def definition() -> dict[str, Any]:
    """The definition as data (YAML anchors resolved)."""
    data: dict[str, Any] = yaml.safe_load(definition_yaml())
    return data


@cache
def definition_json() -> str:
    return json.dumps(definition(), indent=2, ensure_ascii=False) + "\n"


async def openapi_yaml(request: Request) -> Response:
    return Response(definition_yaml(), media_type="application/yaml")


async def openapi_json(request: Request) -> Response:
    return Response(definition_json(), media_type="application/json")


async def explorer(request: Request) -> Response:
    return FileResponse(
        EXPLORER / "index.html",
        headers={
            "Content-Security-Policy": EXPLORER_POLICY,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


def routes() -> list[BaseRoute]:
    return [
        Route("/openapi.yaml", openapi_yaml, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", explorer, methods=["GET"]),
        Mount("/docs/assets", StaticFiles(directory=EXPLORER), name="explorer"),
    ]
