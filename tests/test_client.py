"""The partner's client library against a real server."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from sqlalchemy import Engine
from starlette.types import ASGIApp, Receive, Scope, Send

from famprov.api.app import create_app
from famprov.client import (
    ApiError,
    AsyncClient,
    Client,
    Conflict,
    InvalidRequest,
    Unauthorized,
    Unavailable,
)
from famprov.clock import FixedClock
from famprov.config import Settings
from famprov.store.schema import licenses
from support import SALT, Partner, rows


def test_grant_encodes_every_value(server, partner: Partner, engine: Engine) -> None:
    email = "ann+kids&co@example.com"
    with Client(server.url, partner="acme", salt=partner.salt) as client:
        grant = client.grant(
            transaction_id="a&b=c?d", first_name="Ann Marie", email=email
        )

    [row] = rows(engine, licenses)
    assert (row.order_number, row.email) == (grant.order_number, email)
    assert row.transaction_id == "a&b=c?d"
    assert row.first_name == "Ann Marie"
    assert grant.vault_url.startswith("http://famprov.test/invite/")


def test_refusals_raise_typed_errors_with_the_servers_message(
    server, partner: Partner
) -> None:
    with Client(server.url, partner="acme", salt=partner.salt) as client:
        client.grant(transaction_id="1", first_name="Ann", email="ann@example.com")
        with pytest.raises(Conflict) as conflict:
            client.grant(transaction_id="1", first_name="Bob", email="ann@example.com")
        with pytest.raises(InvalidRequest) as invalid:
            client.grant(transaction_id="2", first_name="Ann", email="not-an-email")
    wrong = Client(server.url, partner="acme", salt="wrong-salt-0123456789")
    with wrong as client, pytest.raises(Unauthorized) as unauthorized:
        client.grant(transaction_id="3", first_name="Ann", email="x@example.com")

    assert conflict.value.status == 409
    assert "already used with different details" in conflict.value.message
    assert invalid.value.message == "Invalid request - Invalid email address"
    assert unauthorized.value.message == "Invalid Hash Value - UnAuthorized"


class FlakyFront:
    """Answers 503 to the first ``failures`` requests, then lets them through."""

    def __init__(self, app: ASGIApp, failures: int) -> None:
        self.app = app
        self.failures = failures
        self.seen = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.seen += 1
            if self.seen <= self.failures:
                await send(
                    {"type": "http.response.start", "status": 503, "headers": []}
                )
                await send({"type": "http.response.body", "body": b"busy"})
                return
        await self.app(scope, receive, send)


@pytest.fixture
def flaky(
    settings: Settings, clock: FixedClock, engine: Engine
) -> Iterator[tuple[str, FlakyFront]]:
    front = FlakyFront(create_app(settings, clock=clock), failures=2)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(front, log_config=None, ws="none"))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, daemon=True
    )
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", front
    server.should_exit = True
    thread.join(10)
    sock.close()


def test_5xx_is_retried_until_it_succeeds(
    flaky, partner: Partner, engine: Engine
) -> None:
    url, front = flaky
    with Client(url, partner="acme", salt=partner.salt, backoff=0.01) as client:
        grant = client.grant(
            transaction_id="1", first_name="Ann", email="a@example.com"
        )

    assert front.seen == 3
    assert [r.order_number for r in rows(engine, licenses)] == [grant.order_number]


def test_async_client_retries_too(flaky, partner: Partner) -> None:
    url, front = flaky

    async def go() -> str:
        async with AsyncClient(
            url, partner="acme", salt=partner.salt, backoff=0.01
        ) as c:
            grant = await c.grant(
                transaction_id="1", first_name="Ann", email="a@example.com"
            )
            return grant.order_number

    assert asyncio.run(go())
    assert front.seen == 3


def test_gives_up_after_its_retries(flaky, partner: Partner) -> None:
    url, front = flaky
    client = Client(url, partner="acme", salt=partner.salt, retries=1, backoff=0.01)
    with client as c, pytest.raises(Unavailable, match="kept answering 503"):
        c.grant(transaction_id="1", first_name="Ann", email="a@example.com")
    assert front.seen == 2


def test_unreachable_server_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: refused
        with (
            Client(
                f"http://127.0.0.1:{port}",
                partner="a",
                salt="s" * 20,
                retries=2,
                backoff=0.01,
            ) as c,
            pytest.raises(Unavailable, match="unreachable"),
        ):
            c.grant(transaction_id="1", first_name="Ann", email="a@example.com")


def test_salt_never_shows_in_repr() -> None:
    with Client("http://127.0.0.1:9", partner="a", salt="very-secret-salt-value") as c:
        assert "very-secret-salt-value" not in repr(vars(c._policy))


def test_http_client_logs_hold_no_query(
    server, partner: Partner, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="httpx")
    with Client(server.url, partner="acme", salt=partner.salt) as client:
        client.grant(transaction_id="1", first_name="Ann", email="ann@example.com")

    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "create-license?[secure]" in logged
    assert "ann" not in logged
    assert partner.hash("ann@example.com") not in logged


def test_a_missing_value_is_a_clear_error_before_any_request() -> None:
    with (
        Client("http://127.0.0.1:9", partner="acme", salt=SALT) as client,
        pytest.raises(TypeError, match="email must be a string, not NoneType"),
    ):
        client.grant(transaction_id="x", first_name="A", email=None)  # type: ignore[arg-type]


def test_a_wrong_base_url_says_so(server, partner: Partner) -> None:
    with (
        Client(server.url + "/api", partner=partner.name, salt=partner.salt) as client,
        pytest.raises(ApiError) as raised,
    ):
        client.grant(transaction_id="x", first_name="A", email="a@example.com")
    assert raised.value.status == 404
    assert "no famprov partner API at" in raised.value.message
    assert "/api/bi_api/v1/services/partner/create-license " in raised.value.message
    assert "a@example.com" not in raised.value.message
