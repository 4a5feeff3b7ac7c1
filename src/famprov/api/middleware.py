"""Request id and the request log, replacing the server's access log.

One line per request: request id, method, path, status, latency, and what
the handler recorded (partner, outcome). The query string is never logged:
on the partner endpoint it holds the hash and personal data. Vault tokens in
paths print as ``[secure]``.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from famprov.api.errors import HTTP_MESSAGES, failure
from famprov.logs import log

MAX_URI_BYTES = 8192
_SECRET_PATH_PREFIXES = ("/invite/",)


def loggable_path(path: str) -> str:
    for prefix in _SECRET_PATH_PREFIXES:
        if path.startswith(prefix):
            return prefix + "[secure]"
    return path[:200]


class RequestLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = secrets.token_hex(8)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        state: dict[str, Any] = scope.setdefault("state", {})
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            if len(scope["raw_path"]) + len(scope["query_string"]) > MAX_URI_BYTES:
                state["outcome"] = "uri_too_long"
                await failure(414, HTTP_MESSAGES[414])(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            log.info(
                "request",
                method=scope["method"],
                path=loggable_path(scope["path"]),
                status=status,
                latency_ms=round((time.perf_counter() - started) * 1000, 2),
                outcome=state.get("outcome"),
            )
