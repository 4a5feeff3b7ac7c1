"""Request id and the request log, replacing the server's access log.

One line per request: request id, method, path, status, latency, and what
the handler recorded (partner, outcome). The query string is never logged:
on the partner endpoint it holds the hash and personal data. Vault tokens in
paths print as ``[secure]``. An error nothing else handled is answered here,
as a JSON 500 that still carries the request id.
"""

from __future__ import annotations

import itertools
import secrets
import time
import traceback
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from famprov import logs
from famprov.api.errors import failure
from famprov.api.metrics import Metrics
from famprov.logs import log

_SECRET_PATH_PREFIXES = ("/invite/",)


def loggable_path(path: str) -> str:
    for prefix in _SECRET_PATH_PREFIXES:
        if path.startswith(prefix):
            return prefix + "[secure]"
    return path[:200]


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "unknown"
    last = frames[-1]
    return f"{Path(last.filename).name}:{last.lineno} in {last.name}"


class RequestLogMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        # Request ids need to be unique, not secret: a random prefix per
        # process and a counter are as good as fresh randomness, and cheaper.
        prefix = secrets.token_hex(4)
        self._ids = (f"{prefix}{n:08x}" for n in itertools.count())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = next(self._ids)
        rid = request_id.encode()
        started_response = False
        logs.start_request(request_id)
        state: dict[str, Any] = scope.setdefault("state", {})
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                started_response = True
                status = message["status"]
                # Each response start is a fresh message of its sender's.
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-request-id", rid),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            # Only the type and the place: the message of a database error
            # can hold the statement's values, emails and tokens among them.
            state["outcome"] = "crash"
            log.error("unhandled_error", error=type(exc).__name__, at=_where(exc))
            if not started_response:
                await failure(500, "Internal server error")(
                    scope, receive, send_with_id
                )
        finally:
            seconds = time.perf_counter() - started
            outcome = state.get("outcome")
            self.metrics.observe(scope["path"], status, seconds, outcome)
            log.info(
                "request",
                method=scope["method"],
                path=loggable_path(scope["path"]),
                status=status,
                latency_ms=round(seconds * 1000, 2),
                outcome=outcome,
            )
