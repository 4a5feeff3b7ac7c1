"""The HTTP protocol famprov serves with: uvicorn's httptools protocol, with
two changes.

- A request too malformed to reach the app is still answered in the API's
  JSON shape.
- The head of a request (request line and headers) is capped. httptools
  gathers a header whole before handing it on, however long it grows, so
  without a cap one caller can make the server hold gigabytes.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from famprov.api.errors import HTTP_MESSAGES, failure_body
from famprov.logs import log

MAX_HEAD_BYTES = 64 * 1024


def _answer(status: bytes, message: str) -> bytes:
    body = failure_body(message)
    return (
        b"HTTP/1.1 " + status + b"\r\n"
        b"content-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
    ) + body


MALFORMED = _answer(b"400 Bad Request", "Invalid request - Malformed HTTP request")
HEAD_TOO_LARGE = _answer(b"431 Request Header Fields Too Large", HTTP_MESSAGES[431])


# TODO: a connection that never finishes its head is held open for as long as
# its peer likes (found by a trial: 1,000 such sockets were all open after
# 75 s); a head-read deadline belongs with the abuse limits of issue 8. Until
# then, put a proxy that enforces one in front (docs/operations.md).
class JsonErrorsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._in_head = True

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(HEAD_TOO_LARGE, "head_too_large")
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        self._head_bytes = 0
        self._in_head = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        self._refuse(MALFORMED, "malformed")

    def _refuse(self, answer: bytes, outcome: str) -> None:
        log.info("request_refused", outcome=outcome)
        self.transport.write(answer)
        self.transport.close()
