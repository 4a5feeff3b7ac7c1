"""The v1 partner endpoint over HTTP, against a real server and store."""

from __future__ import annotations

import contextlib
import json
import re
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import Engine, text

from famprov.clock import FixedClock
from famprov.config import Settings
from famprov.store.schema import licenses, outbox
from support import V1_PATH, Partner, mail_files, only, rows, vendor_url, wait_for

MISSING = {"success": False, "message": "Invalid request - Missing required fields"}
UNAUTHORIZED = {"success": False, "message": "Invalid Hash Value - UnAuthorized"}
CONFLICT = {
    "success": False,
    "message": "Invalid request - transaction_id already used with different details",
}
ORDER_NUMBER = re.compile(r"\d{8}-\d{4}")


@pytest.mark.parametrize("path", [V1_PATH, "/create-license"])
def test_grant_answers_the_documented_body_on_both_paths(
    http: httpx.Client, partner: Partner, path: str
) -> None:
    response = http.get(
        path, params=partner.params(), headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"success", "order_number", "vault_url"}
    assert body["success"] is True
    assert ORDER_NUMBER.fullmatch(body["order_number"])
    token = body["vault_url"].removeprefix("http://famprov.test/invite/")
    assert token != body["vault_url"]
    assert len(token) >= 22  # 22 URL-safe base64 characters hold 128 bits


def test_grant_creates_a_one_year_family_license(
    http: httpx.Client, partner: Partner, engine: Engine, clock: FixedClock
) -> None:
    body = http.get(V1_PATH, params=partner.params()).json()

    [row] = rows(engine, licenses)
    assert row.order_number == body["order_number"]
    assert row.status == "invited"
    assert row.plan == "family"
    assert row.products == '["family_plan", "dark_web_monitoring", "file_storage_10gb"]'
    assert row.starts_at == clock.now()
    assert row.expires_at == clock.now().replace(year=clock.now().year + 1)
    [invitation] = rows(engine, outbox)
    assert invitation.license_id == row.id


def test_vendor_sample_url_with_plus_in_email_is_read_as_plus(
    server, partner: Partner, engine: Engine
) -> None:
    # The sample does not encode, so '+' arrives as a space; the hash was
    # computed over the '+' form.
    params = partner.params(email="ann+family@example.com")
    response = httpx.get(vendor_url(server.url, params))

    assert response.status_code == 200, response.text
    [row] = rows(engine, licenses)
    assert row.email == "ann+family@example.com"


def test_uppercase_hex_hash_verifies(http: httpx.Client, partner: Partner) -> None:
    params = partner.params()
    params["hash"] = params["hash"].upper()
    assert http.get(V1_PATH, params=params).status_code == 200


@pytest.mark.parametrize(
    "name", ["transaction_id", "first_name", "email", "hash", "partner_name"]
)
@pytest.mark.parametrize("value", [None, "", "   "])
def test_missing_or_blank_required_parameter_is_400(
    http: httpx.Client, partner: Partner, engine: Engine, name: str, value: str | None
) -> None:
    params = partner.params()
    if value is None:
        del params[name]
    else:
        params[name] = value
    response = http.get(V1_PATH, params=params)

    assert response.status_code == 400
    assert response.json() == MISSING
    assert rows(engine, licenses) == []


def test_last_name_is_optional(http: httpx.Client, partner: Partner) -> None:
    params = partner.params()
    del params["last_name"]
    assert http.get(V1_PATH, params=params).status_code == 200


def test_blank_last_name_counts_as_absent(
    http: httpx.Client, partner: Partner, engine: Engine
) -> None:
    assert http.get(V1_PATH, params=partner.params(last_name="  ")).status_code == 200
    assert rows(engine, licenses)[0].last_name is None


def test_head_grants_nothing(
    http: httpx.Client, partner: Partner, engine: Engine
) -> None:
    response = http.head(V1_PATH, params=partner.params())

    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
    assert rows(engine, licenses) == []


def test_trailing_slash_is_404_not_a_redirect_repeating_the_query(
    http: httpx.Client, partner: Partner
) -> None:
    response = http.get(V1_PATH + "/", params=partner.params())

    assert response.status_code == 404
    assert response.json() == {"success": False, "message": "Not found"}
    assert "location" not in response.headers


def test_request_too_malformed_for_the_app_is_still_json(server) -> None:
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(server.url)
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        sock.sendall(b"GET /create-license?email=a b HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = b""
        while chunk := sock.recv(4096):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")

    assert head.startswith(b"HTTP/1.1 400")
    assert b"content-type: application/json" in head
    assert json.loads(body) == {
        "success": False,
        "message": "Invalid request - Malformed HTTP request",
    }


def test_wrong_hash_unknown_partner_and_malformed_hash_answer_alike(
    http: httpx.Client, partner: Partner, engine: Engine
) -> None:
    wrong = partner.params(hash=partner.hash("someone@example.com"))
    unknown = partner.params(partner_name="no-such-partner")
    malformed = partner.params(hash="zz" * 32)
    short = partner.params(hash="abc")
    # Names no partner can have: PostgreSQL refuses a NUL in a text, so
    # such a name must not reach the store (it was a 500 there).
    impossible = [
        partner.params(partner_name=name)
        for name in ("ac\x00me", "acme\n", " acme", "-acme", "a" * 65, "ac/me")
    ]
    sent = [wrong, unknown, malformed, short, *impossible]
    answers = [http.get(V1_PATH, params=p) for p in sent]

    assert [a.status_code for a in answers] == [401] * len(sent)
    assert all(a.json() == UNAUTHORIZED for a in answers)
    assert len({a.content for a in answers}) == 1
    assert rows(engine, licenses) == []


def test_disabled_partner_is_401(
    http: httpx.Client, partner: Partner, engine: Engine, clock: FixedClock
) -> None:
    from famprov.partners.service import set_enabled

    set_enabled(engine, clock, partner.name, False)
    response = http.get(V1_PATH, params=partner.params())

    assert response.status_code == 401
    assert response.json() == UNAUTHORIZED


def test_hash_is_checked_before_the_fields(
    http: httpx.Client, partner: Partner
) -> None:
    bad_email_bad_hash = partner.params(email="not an email", hash="0" * 64)
    response = http.get(V1_PATH, params=bad_email_bad_hash)
    assert response.status_code == 401


BAD_EMAIL = "Invalid request - Invalid email address"
CONTROL = "control characters"
SPACE = "leading or trailing white space"


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("email", "not-an-email", BAD_EMAIL),
        ("email", "ann@example.com ", BAD_EMAIL),
        ("email", " ann@example.com", BAD_EMAIL),
        ("email", "ann@@example.com", BAD_EMAIL),
        ("email", "a" * 245 + "@example.com", BAD_EMAIL),
        ("email", "ann\u0000@example.com", BAD_EMAIL),
        ("first_name", "Ann\r\nBcc: x@example.com", CONTROL),
        ("first_name", " Ann", SPACE),
        ("first_name", "A" * 101, "at most 100 characters"),
        ("last_name", "Lee\t", SPACE),
        ("last_name", "L\x07e", CONTROL),
        ("first_name", "Ann\u202eeeL", CONTROL),
        ("first_name", "Ann\ue000", CONTROL),
        ("email", "a" * 65 + "@example.com", BAD_EMAIL),
        ("transaction_id", "x" * 129, "at most 128 characters"),
        ("transaction_id", "00\n01", CONTROL),
    ],
)  # fmt: skip
def test_invalid_field_is_400_naming_it(
    http: httpx.Client,
    partner: Partner,
    engine: Engine,
    field: str,
    value: str,
    problem: str,
) -> None:
    params = partner.params(**{field: value})  # the hash verifies
    response = http.get(V1_PATH, params=params)
    message = (
        problem if field == "email" else f"Invalid request - Invalid {field}: {problem}"
    )

    assert response.status_code == 400
    assert response.json() == {"success": False, "message": message}
    assert rows(engine, licenses) == []


def test_repeated_parameter_is_400(http: httpx.Client, partner: Partner) -> None:
    params = [*partner.params().items(), ("email", "eve@example.com")]
    response = http.get(V1_PATH, params=params)

    assert response.status_code == 400
    assert response.json() == {
        "success": False,
        "message": "Invalid request - Duplicate parameter: email",
    }


def test_query_that_is_not_utf8_is_400(server, partner: Partner) -> None:
    query = "&".join(f"{k}={v}" for k, v in partner.params().items())
    response = httpx.get(f"{server.url}{V1_PATH}?{query}&first_name=%FF")
    assert response.status_code == 400
    assert response.json()["success"] is False


def test_replay_returns_the_original_answer_and_writes_nothing(
    http: httpx.Client, partner: Partner, engine: Engine, settings: Settings
) -> None:
    first = http.get(V1_PATH, params=partner.params())
    second = http.get(V1_PATH, params=partner.params())

    assert first.status_code == second.status_code == 200
    assert second.json() == first.json()
    assert len(rows(engine, licenses)) == 1
    assert len(rows(engine, outbox)) == 1
    wait_for(lambda: mail_files(settings))
    assert len(mail_files(settings)) == 1


def test_replay_with_other_case_in_email_is_the_same_grant(
    http: httpx.Client, partner: Partner
) -> None:
    first = http.get(V1_PATH, params=partner.params()).json()
    again = http.get(V1_PATH, params=partner.params(email="Ann@Example.COM"))
    assert again.json() == first


@pytest.mark.parametrize(
    "change",
    [{"first_name": "Anna"}, {"last_name": "Li"}, {"email": "bob@example.com"}],
)
def test_transaction_id_reused_with_other_details_is_409(
    http: httpx.Client, partner: Partner, engine: Engine, change: dict[str, str]
) -> None:
    http.get(V1_PATH, params=partner.params())
    response = http.get(V1_PATH, params=partner.params(**change))

    assert response.status_code == 409
    assert response.json() == CONFLICT
    assert len(rows(engine, licenses)) == 1


def test_second_grant_to_the_same_person_is_409_naming_the_order(
    http: httpx.Client, partner: Partner, engine: Engine
) -> None:
    first = http.get(V1_PATH, params=partner.params()).json()
    again = http.get(
        V1_PATH, params=partner.params(transaction_id="0002", email="ANN@example.com")
    )

    assert again.status_code == 409
    assert again.json()["success"] is False
    assert first["order_number"] in again.json()["message"]
    assert len(rows(engine, licenses)) == 1


def test_person_can_be_granted_again_after_expiry(
    http: httpx.Client, partner: Partner, engine: Engine, clock: FixedClock
) -> None:
    first = http.get(V1_PATH, params=partner.params()).json()
    clock.set(clock.now() + timedelta(days=366))
    again = http.get(V1_PATH, params=partner.params(transaction_id="0002"))

    assert again.status_code == 200
    assert again.json()["order_number"] != first["order_number"]
    statuses = {r.order_number: r.status for r in rows(engine, licenses)}
    assert statuses[first["order_number"]] == "expired"


def test_license_created_on_29_february_ends_on_28_february(
    http: httpx.Client, partner: Partner, engine: Engine, clock: FixedClock
) -> None:
    clock.set(clock.now().replace(year=2028, month=2, day=29, hour=23, minute=59))
    http.get(V1_PATH, params=partner.params())

    [row] = rows(engine, licenses)
    assert row.starts_at.isoformat() == "2028-02-29T23:59:00+00:00"
    assert row.expires_at.isoformat() == "2029-02-28T23:59:00+00:00"


def test_non_ascii_email_verifies_with_the_vendor_recipe(
    http: httpx.Client, partner: Partner, engine: Engine
) -> None:
    import hashlib

    email = "zoë@exämple.com"
    digest = hashlib.sha256((email + partner.salt).encode("utf-8")).hexdigest()
    response = http.get(V1_PATH, params=partner.params(email=email, hash=digest))

    assert response.status_code == 200, response.text
    [row] = rows(engine, licenses)
    assert row.email == email


def test_every_failure_is_json(http: httpx.Client, server) -> None:
    not_found = http.get("/nowhere")
    wrong_method = http.post(V1_PATH)
    too_long = http.get(V1_PATH, params={"email": "a" * 9000})

    assert (not_found.status_code, not_found.json()) == (
        404,
        {"success": False, "message": "Not found"},
    )
    assert (wrong_method.status_code, wrong_method.json()) == (
        405,
        {"success": False, "message": "Method not allowed"},
    )
    assert (too_long.status_code, too_long.json()) == (
        414,
        {"success": False, "message": "Request URI too long"},
    )


def test_internal_error_is_json_without_internals(
    http: httpx.Client, partner: Partner, engine: Engine
) -> None:
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE outbox"))
    response = http.get(V1_PATH, params=partner.params())

    assert response.status_code == 500
    assert response.json() == {"success": False, "message": "Internal server error"}
    assert len(response.headers["x-request-id"]) == 16


def test_health_and_readiness(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"success": True, "status": "alive"}
    ready = http.get("/readyz")
    assert (ready.status_code, ready.json()["status"]) == (200, "ready")


def test_metrics_count_grants_and_invitations(
    http: httpx.Client, partner: Partner, engine: Engine, settings: Settings
) -> None:
    http.get(V1_PATH, params=partner.params())
    http.get(V1_PATH, params=partner.params())
    http.get(V1_PATH, params=partner.params(hash="0" * 64))
    http.get("/random-scan-path")
    http.get("/invite/no-such-token")
    wait_for(lambda: rows(engine, outbox)[0].status == "sent")
    response = http.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert 'famprov_grants_total{outcome="granted"} 1.0' in text
    assert 'famprov_grants_total{outcome="replayed"} 1.0' in text
    assert 'famprov_grants_total{outcome="partner_auth"} 1.0' in text
    assert 'famprov_http_requests_total{route="other",status="404"} 1.0' in text
    assert 'famprov_invitations{state="sent"} 1.0' in text
    assert 'famprov_licenses{status="invited"} 1.0' in text
    assert "random-scan-path" not in text
    assert (
        'famprov_http_requests_total{route="/invite/{token}",status="404"} 1.0' in text
    )
    assert "no-such-token" not in text
    # Both grants were written, each in a commit of its own (the replay too:
    # it is read in the writer's transaction).
    assert "famprov_writer_batch_grants_count 2.0" in text
    assert 'famprov_writer_batch_grants_bucket{le="1.0"} 2.0' in text
    assert 'famprov_http_request_duration_seconds_count{route="other"} 1.0' in text


def test_oversized_request_head_is_431_json(server) -> None:
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(server.url)
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            for _ in range(200):  # 2 MB, far past the cap
                sock.sendall(b"a" * 10_000)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed: what we want
        raw = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(4096):
                raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")

    assert head.startswith(b"HTTP/1.1 431")
    assert json.loads(body) == {
        "success": False,
        "message": "Request header fields too large",
    }


def test_invisible_characters_in_names_are_refused(
    http: httpx.Client, partner: Partner
) -> None:
    for name in ("Ann\u200bLee", "An\u00adn", "\u202eAnn"):
        response = http.get(V1_PATH, params=partner.params(first_name=name))
        assert response.status_code == 400, name
    joined = partner.params(first_name="\u0645\u200c\u0627")  # ZWNJ in Persian
    assert http.get(V1_PATH, params=joined).status_code == 200


@only("sqlite")
def test_a_head_that_does_not_arrive_in_time_is_dropped(
    server, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slow or silent connections cannot be held open for nothing."""
    import socket
    from urllib.parse import urlsplit

    from famprov.api import protocol

    monkeypatch.setattr(protocol, "HEAD_SECONDS", 0.5)
    parts = urlsplit(server.url)
    address = (parts.hostname, parts.port)
    with (
        socket.create_connection(address) as slow,
        socket.create_connection(address) as silent,
    ):
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        slow.settimeout(10)
        silent.settimeout(10)
        # Meanwhile a whole request is served as usual.
        assert http.get("/healthz").status_code == 200
        raw = b""
        while chunk := slow.recv(4096):
            raw += chunk
        assert silent.recv(4096) == b""  # closed without a word
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert json.loads(body) == {
        "success": False,
        "message": "Request head not received in time",
    }
