"""The HTTP protocol famprov serves with: uvicorn's httptools protocol, with
four changes.

- A request too malformed to reach the app is still answered in the API's
  JSON shape.
- The head of a request (request line and headers) is capped: the request
  target at `MAX_URI_BYTES` (414), each header field at `MAX_FIELD_BYTES`,
  the number of fields at `MAX_FIELDS` and the whole head at
  `MAX_HEAD_BYTES` (431). httptools gathers a header whole before handing it
  on, however long it grows, so without a cap one caller can make the
  server hold gigabytes. Each refusal is a JSON answer, and the connection
  is closed: the rest of what it sends is never read.
- The head must arrive in time (`HEAD_SECONDS`): a connection that opens and
  says nothing, or sends its head a byte at a time, is dropped (with a JSON
  408 if it had begun), so one caller cannot hold many connections open.

The answers to these three are written before the app sees the request, so
they carry no request id; each is logged as ``request_refused`` with its
outcome.

- What one round of the event loop writes to a connection goes out in one
  send (`GatheredWrites`). uvicorn writes a response's head as soon as the
  app starts it and its body in a second call, two sends and two TCP
  segments for every answer; gathered, the serving process and the client
  each spend about 7 µs less a grant (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import Any, ClassVar, NoReturn

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from famprov.api.errors import HTTP_MESSAGES, failure_body
from famprov.logs import log

MAX_URI_BYTES = 8 * 1024  # the request target: path and query, as sent
MAX_FIELD_BYTES = 8 * 1024  # one header field: its name and its value
MAX_FIELDS = 100
MAX_HEAD_BYTES = 64 * 1024  # the request line and every header, as sent
# A connection must send a whole request head this soon after it opens or
# its request begins; otherwise one client could hold connections open at no
# cost to itself. Keep-alive connections between requests are uvicorn's
# (closed after its keep-alive timeout).
HEAD_SECONDS = 10.0
# What a connection may hold back before it sends, at most: a response's
# head and body together, however the app hands them over.
GATHER_BYTES = 64 * 1024
SWEEP_SECONDS = 1.0


def _answer(status: bytes, message: str) -> bytes:
    body = failure_body(message)
    return (
        b"HTTP/1.1 " + status + b"\r\n"
        b"content-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
    ) + body


MALFORMED = _answer(b"400 Bad Request", "Invalid request - Malformed HTTP request")
URI_TOO_LONG = _answer(b"414 URI Too Long", HTTP_MESSAGES[414])
HEAD_TOO_LARGE = _answer(b"431 Request Header Fields Too Large", HTTP_MESSAGES[431])
HEAD_TOO_SLOW = _answer(b"408 Request Timeout", HTTP_MESSAGES[408])


class _RefusedError(Exception):
    """Raised in a parser callback to stop the parser; the answer waits in
    the protocol's ``_refusal``."""


class JsonErrorsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Bytes are counted against MAX_HEAD_BYTES from the connection's
        # start or the end of the previous request until a head is whole.
        self._counting = True
        self._head_bytes = 0
        self._in_head = True
        self._head_started = time.monotonic()
        self._request_begun = False
        self._refusal: tuple[bytes, str] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Flow control keeps the real transport (uvicorn's FlowControl, made
        # above); everything written goes through the gathering one.
        self.transport = GatheredWrites(transport, self.loop)  # type: ignore[assignment]
        self._head_started = time.monotonic()
        _HeadWatch.of(self.loop).watch(self)

    def data_received(self, data: bytes) -> None:
        if self._counting:
            room = MAX_HEAD_BYTES - self._head_bytes
            self._head_bytes += len(data)
            if len(data) > room:
                # The parser sees the head up to the cap: a request target
                # over its own limit in there is a 414, not a 431, and a head
                # that ends in there is served, with what follows.
                super().data_received(data[:room])
                if self._counting:
                    self._refuse(HEAD_TOO_LARGE, "head_too_large")
                    return
                data = data[room:]
        # TODO: bytes of a pipelined request that arrive in the same read as
        # the end of the request before it are not counted against its head:
        # one read's worth (up to 256 KiB) beyond MAX_HEAD_BYTES for such a
        # request. Counting them needs the parser's position, which httptools
        # does not tell.
        super().data_received(data)

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_started = time.monotonic()
        self._request_begun = True
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > MAX_URI_BYTES:
            self._stop(URI_TOO_LONG, "uri_too_long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > MAX_FIELD_BYTES:
            self._stop(HEAD_TOO_LARGE, "header_too_large")
        if len(self.headers) >= MAX_FIELDS:
            self._stop(HEAD_TOO_LARGE, "too_many_headers")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._counting = False
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        # What comes next is the next request's head.
        self._counting = True
        self._head_bytes = 0
        super().on_message_complete()

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
        # uvicorn's answer to a parser error, a stop of ours included.
        self._refuse(*(self._refusal or (MALFORMED, "malformed")))

    def _stop(self, answer: bytes, outcome: str) -> NoReturn:
        """Refuse the request from inside a parser callback: the exception
        ends the parser's run before it hands the request on, and reaches
        `send_400_response` as a parser error."""
        self._refusal = (answer, outcome)
        raise _RefusedError(outcome)

    def _refuse(self, answer: bytes, outcome: str) -> None:
        if self.transport.is_closing():
            return  # answered already
        log.info("request_refused", outcome=outcome)
        self.transport.write(answer)
        self.transport.close()


class GatheredWrites:
    """A transport that sends what is written to it in one round of the
    event loop as one piece, at the start of the next round (or at once past
    `GATHER_BYTES`, or when it is closed). Everything else is the wrapped
    transport's."""

    __slots__ = ("_chunks", "_loop", "_size", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._chunks: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        if not self._chunks:
            self._loop.call_soon(self.flush)
        self._chunks.append(data)
        self._size += len(data)
        if self._size > GATHER_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self._chunks:
            return
        chunks, self._chunks, self._size = self._chunks, [], 0
        if not self._transport.is_closing():
            self._transport.write(b"".join(chunks))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._chunks, self._size = [], 0
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


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
