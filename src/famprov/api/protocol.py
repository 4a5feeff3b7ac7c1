"""The HTTP protocol famprov serves with: uvicorn's httptools protocol, with
three changes.

- A request too malformed to reach the app is still answered in the API's
  JSON shape.
- The head of a request (request line and headers) is capped. httptools
  gathers a header whole before handing it on, however long it grows, so
  without a cap one caller can make the server hold gigabytes.
- The head must arrive in time (`HEAD_SECONDS`): a connection that opens and
  says nothing, or sends its head a byte at a time, is dropped (with a JSON
  408 if it had begun), so one caller cannot hold many connections open.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from famprov.api.errors import HTTP_MESSAGES, failure_body
from famprov.logs import log

MAX_HEAD_BYTES = 64 * 1024
# A connection must send a whole request head this soon after it opens or
# its request begins; otherwise one client could hold connections open at no
# cost to itself. Keep-alive connections between requests are uvicorn's
# (closed after its keep-alive timeout).
HEAD_SECONDS = 10.0
SWEEP_SECONDS = 1.0


def _answer(status: bytes, message: str) -> bytes:
    body = failure_body(message)
    return (
        b"HTTP/1.1 " + status + b"\r\n"
        b"content-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
    ) + body


MALFORMED = _answer(b"400 Bad Request", "Invalid request - Malformed HTTP request")
HEAD_TOO_LARGE = _answer(b"431 Request Header Fields Too Large", HTTP_MESSAGES[431])
HEAD_TOO_SLOW = _answer(b"408 Request Timeout", HTTP_MESSAGES[408])


class JsonErrorsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._in_head = True
        self._head_started = time.monotonic()
        self._request_begun = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_started = time.monotonic()
        _HeadWatch.of(self.loop).watch(self)

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
        self._head_started = time.monotonic()
        self._request_begun = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def head_overdue(self, now: float) -> bool:
        """Connected, or begun a request, and no whole head for too long."""
        return (
            self._in_head
            and now - self._head_started > HEAD_SECONDS
            and not self.transport.is_closing()
        )

    def drop_slow_head(self) -> None:
        if self._request_begun:
            self._refuse(HEAD_TOO_SLOW, "head_too_slow")
        else:
            self.transport.close()  # never said a word: nobody to answer

    def send_400_response(self, msg: str) -> None:
        self._refuse(MALFORMED, "malformed")

    def _refuse(self, answer: bytes, outcome: str) -> None:
        log.info("request_refused", outcome=outcome)
        self.transport.write(answer)
        self.transport.close()


class _HeadWatch:
    """Once a second, drops the connections of one event loop whose request
    head is overdue: a look at each open connection, instead of a timer set
    and cancelled for every request."""

    _by_loop: ClassVar[weakref.WeakKeyDictionary[Any, _HeadWatch]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._connections: weakref.WeakSet[JsonErrorsProtocol] = weakref.WeakSet()
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _HeadWatch:
        watch = cls._by_loop.get(loop)
        if watch is None:
            watch = cls._by_loop[loop] = cls(loop)
        return watch

    def watch(self, connection: JsonErrorsProtocol) -> None:
        self._connections.add(connection)
        if self._timer is None:
            self._timer = self._loop.call_later(SWEEP_SECONDS, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        now = time.monotonic()
        for connection in list(self._connections):
            if connection.transport.is_closing():
                self._connections.discard(connection)
            elif connection.head_overdue(now):
                connection.drop_slow_head()
        if self._connections:
            self._timer = self._loop.call_later(SWEEP_SECONDS, self._sweep)
