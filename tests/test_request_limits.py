"""Request size limits, over raw sockets: a request target over 8 KiB is a
414, a header field over 8 KiB, more than 100 fields or a head over 64 KiB a
431, each in the API's JSON shape; exactly at each limit, the request is
served."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import Engine

from famprov.api import protocol
from famprov.store.schema import licenses
from support import V1_PATH, LiveServer, Partner, only, rows, vendor_url

pytestmark = only("sqlite")  # the HTTP layer is the same on either store

URI_TOO_LONG = {"success": False, "message": "Request URI too long"}
HEAD_TOO_LARGE = {"success": False, "message": "Request header fields too large"}


@contextlib.contextmanager
def connection(server: LiveServer) -> Iterator[socket.socket]:
    parts = urlsplit(server.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        yield sock


def send(sock: socket.socket, data: bytes) -> None:
    # The server may answer and close before it has read everything.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(data)


def answer(sock: socket.socket) -> tuple[int, dict[str, str], Any]:
    """Read one response: status, headers, JSON body."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {raw!r}"
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(lines[0].split(" ")[1]), headers, json.loads(body)


def closed(sock: socket.socket) -> bool:
    """The server closed the connection (it reads nothing more)."""
    with contextlib.suppress(ConnectionResetError):
        return sock.recv(1) == b""
    return True


def request(
    target: str, fields: list[tuple[str, str]] | None = None, method: str = "GET"
) -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: x\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in fields or [])
    return (head + "\r\n").encode()


def target_of(size: int, path: str = "/healthz") -> str:
    """A request target of exactly ``size`` bytes."""
    start = f"{path}?pad="
    return start + "a" * (size - len(start))


def refused(server: LiveServer, data: bytes) -> tuple[int, dict[str, str], Any]:
    with connection(server) as sock:
        send(sock, data)
        status, headers, body = answer(sock)
        assert headers["connection"] == "close"
        assert closed(sock)
    assert headers["content-type"] == "application/json"
    assert "x-request-id" not in headers  # answered before the app
    return status, headers, body


def served(server: LiveServer, data: bytes) -> int:
    with connection(server) as sock:
        send(sock, data)
        status, headers, _ = answer(sock)
    assert "x-request-id" in headers
    return status


def test_a_request_target_of_8_kib_is_served_one_byte_more_is_414(
    server: LiveServer,
) -> None:
    limit = protocol.MAX_URI_BYTES
    assert limit == 8192
    assert served(server, request(target_of(limit))) == 200
    assert refused(server, request(target_of(limit + 1)))[::2] == (414, URI_TOO_LONG)


def test_an_overlong_grant_is_414_and_grants_nothing(
    server: LiveServer, partner: Partner, engine: Engine
) -> None:
    params = partner.params(transaction_id="x" * 9000)
    query = "&".join(f"{key}={value}" for key, value in params.items())
    status, _, body = refused(server, request(f"{V1_PATH}?{query}"))
    assert (status, body) == (414, URI_TOO_LONG)
    assert rows(engine, licenses) == []


@pytest.mark.parametrize("size", [70_000, 1_000_000])
def test_a_request_target_longer_than_the_whole_head_is_still_414(
    server: LiveServer, size: int
) -> None:
    """Past the head's own cap too, the target is what is too long."""
    status, _, body = refused(server, request(target_of(size)))
    assert (status, body) == (414, URI_TOO_LONG)


def test_a_request_target_sent_piece_by_piece_is_414_once_past_the_limit(
    server: LiveServer,
) -> None:
    with connection(server) as sock:
        send(sock, b"GET /healthz?pad=")
        for _ in range(20):  # 20 KiB in 1 KiB pieces
            send(sock, b"a" * 1024)
        status, _, body = answer(sock)
        assert closed(sock)
    assert (status, body) == (414, URI_TOO_LONG)


def test_100_header_fields_are_served_101_are_431(server: LiveServer) -> None:
    assert protocol.MAX_FIELDS == 100
    # Host is the first field of every request here.
    fields = [(f"X-Field-{n}", "1") for n in range(99)]
    assert served(server, request("/healthz", fields)) == 200
    many = request("/healthz", [*fields, ("X-One-More", "1")])
    assert refused(server, many)[::2] == (431, HEAD_TOO_LARGE)


def test_thousands_of_tiny_header_fields_are_431(server: LiveServer) -> None:
    tiny = request("/healthz", [("a", "") for _ in range(10_000)])
    assert len(tiny) < protocol.MAX_HEAD_BYTES  # the count, not the size
    assert refused(server, tiny)[::2] == (431, HEAD_TOO_LARGE)


def test_a_header_field_of_8_kib_is_served_one_byte_more_is_431(
    server: LiveServer,
) -> None:
    limit = protocol.MAX_FIELD_BYTES
    assert limit == 8192
    name = "X-Big"
    exactly = request("/healthz", [(name, "v" * (limit - len(name)))])
    assert served(server, exactly) == 200
    over = request("/healthz", [(name, "v" * (limit - len(name) + 1))])
    assert refused(server, over)[::2] == (431, HEAD_TOO_LARGE)


def head_of(
    size: int, fields: list[tuple[str, str]] | None = None, method: str = "GET"
) -> bytes:
    """A request head of exactly ``size`` bytes: ``fields``, then filler
    fields of at most 8 KiB."""
    fields = list(fields or [])
    data = request("/healthz", fields, method)
    n = 0
    while len(data) < size:
        missing = size - len(data)
        # Each field costs its name, ": ", its value and CRLF.
        value = "v" * min(missing - len("X-Fill-00: \r\n"), 8000)
        fields.append((f"X-Fill-{n:02d}", value))
        n += 1
        data = request("/healthz", fields, method)
    assert len(data) == size
    return data


def test_a_head_of_64_kib_is_served_one_byte_more_is_431(server: LiveServer) -> None:
    limit = protocol.MAX_HEAD_BYTES
    assert limit == 64 * 1024
    assert served(server, head_of(limit)) == 200
    assert refused(server, head_of(limit + 1))[::2] == (431, HEAD_TOO_LARGE)


def test_one_huge_header_field_is_431(server: LiveServer) -> None:
    huge = request("/healthz", [("X-Huge", "h" * 5_000_000)])
    assert refused(server, huge)[::2] == (431, HEAD_TOO_LARGE)


def test_every_request_on_a_kept_alive_connection_is_held_to_the_limits(
    server: LiveServer,
) -> None:
    """The second request's head counts from its first byte, however it
    arrives."""
    with connection(server) as sock:
        send(sock, request("/healthz"))
        assert answer(sock)[0] == 200
        send(sock, head_of(protocol.MAX_HEAD_BYTES))
        assert answer(sock)[0] == 200
        send(sock, head_of(protocol.MAX_HEAD_BYTES + 1))
        status, headers, body = answer(sock)
        assert closed(sock)
    assert (status, body) == (431, HEAD_TOO_LARGE)
    assert headers["connection"] == "close"

    with connection(server) as sock:
        send(sock, request("/healthz"))
        assert answer(sock)[0] == 200
        send(sock, request(target_of(protocol.MAX_URI_BYTES + 1)))
        status, _, body = answer(sock)
        assert closed(sock)
    assert (status, body) == (414, URI_TOO_LONG)


def test_a_head_and_its_body_in_one_piece_are_served(server: LiveServer) -> None:
    """Only the head is held to the head's cap, not a body sent with it."""
    body = b"x" * 10_000
    length = [("Content-Length", str(len(body)))]
    head = head_of(protocol.MAX_HEAD_BYTES, length, method="POST")
    status = served(server, head + body)
    assert status == 405  # read whole, and answered by the app


def data_segments_received(sock: socket.socket) -> int:
    """Linux's count of TCP segments with data that reached this socket
    (``tcpi_data_segs_in`` of ``struct tcp_info``)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 160)
    return int.from_bytes(info[152:156], "little")


@pytest.mark.parametrize("kind", ["grant", "refusal", "health"])
def test_each_answer_arrives_in_one_segment(
    server: LiveServer, partner: Partner, kind: str
) -> None:
    # uvicorn writes a response's head and its body apart; the server sends
    # them as one piece. Measured on the client's socket over loopback,
    # where one segment holds far more than these answers.
    targets = {
        "grant": vendor_url("", partner.params()),
        "refusal": vendor_url("", partner.params(hash="0" * 64)),
        "health": "/healthz",
    }
    with connection(server) as sock:
        send(sock, request("/healthz"))
        answer(sock)
        before = data_segments_received(sock)
        send(sock, request(targets[kind]))
        status, headers, _ = answer(sock)
        after = data_segments_received(sock)
    assert status == {"grant": 200, "refusal": 401, "health": 200}[kind]
    assert "x-request-id" in headers
    assert after - before == 1
