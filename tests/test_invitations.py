"""Invitation emails: what they say, and that none is lost or sent twice."""

from __future__ import annotations

import base64
import email
import stat
import time
from email import policy
from email.message import EmailMessage
from pathlib import Path

import httpx
from sqlalchemy import Engine

from famprov.clock import FixedClock
from famprov.config import Settings
from famprov.store.schema import outbox
from support import (
    V1_PATH,
    LiveServer,
    Partner,
    ServerProcess,
    mail_files,
    rows,
    wait_for,
)


def read_mail(path: Path) -> EmailMessage:
    message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_invitation_greets_lists_products_expiry_and_link(
    http: httpx.Client, partner: Partner, settings: Settings, engine: Engine
) -> None:
    body = http.get(V1_PATH, params=partner.params()).json()

    [path] = wait_for(lambda: mail_files(settings))
    message = read_mail(path)
    assert message["To"].addresses[0].addr_spec == "ann@example.com"
    assert message["To"].addresses[0].display_name == "Ann Lee"
    assert message["Message-ID"]
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert text.startswith("Hello Ann,")
    for product in ("Family plan for up to 5 members", "Dark-web monitoring", "10 GB"):
        assert product in text
        assert product in html
    assert "10 March 2027" in text  # the test clock stands at 10 March 2026
    assert body["vault_url"] in text
    assert body["vault_url"] in html
    wait_for(lambda: rows(engine, outbox)[0].status == "sent")
    # The file holds a working vault URL: the operator's account alone
    # reads it, and the folder the server made.
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_names_in_any_script_are_encoded_and_read_back(
    http: httpx.Client, partner: Partner, settings: Settings
) -> None:
    params = partner.params(first_name="Зоя", last_name="李")
    assert http.get(V1_PATH, params=params).status_code == 200

    [path] = wait_for(lambda: mail_files(settings))
    raw = path.read_bytes()
    assert raw.isascii()  # RFC 2047 encoded words, no raw UTF-8 in headers
    message = read_mail(path)
    assert message["Subject"] == "Зоя, your family plan is ready"
    assert message["To"].addresses[0].display_name == "Зоя 李"


def test_an_encoded_word_in_a_name_adds_no_header_and_no_recipient(
    http: httpx.Client, partner: Partner, settings: Settings
) -> None:
    # The email package decodes RFC 2047 words as it writes a header; the
    # name's own control characters were checked as sent, not as decoded.
    def word(text: str) -> str:
        return "=?utf-8?b?" + base64.b64encode(text.encode()).decode() + "?="

    params = partner.params(
        first_name=word("Ann\r\nBcc: evil@attacker.example\r\n"),
        last_name=word("A>, evil@attacker.example, <"),
    )
    assert http.get(V1_PATH, params=params).status_code == 200

    [path] = wait_for(lambda: mail_files(settings))
    message = read_mail(path)
    assert message["Bcc"] is None
    assert [a.addr_spec for a in message["To"].addresses] == ["ann@example.com"]
    assert "\n" not in message["Subject"]
    assert "Bcc" not in message["Subject"]
    assert b"Bcc:" not in path.read_bytes()


def test_internationalised_domain_is_addressed_in_its_ascii_form(
    http: httpx.Client, partner: Partner, settings: Settings
) -> None:
    params = partner.params(email="ann@bücher.example")
    assert http.get(V1_PATH, params=params).status_code == 200

    [path] = wait_for(lambda: mail_files(settings))
    assert read_mail(path)["To"].addresses[0].domain == "xn--bcher-kva.example"


def test_invitation_queued_before_a_crash_is_delivered_after_restart(
    env: dict[str, str], partner: Partner, settings: Settings, engine: Engine
) -> None:
    api = ServerProcess(env, "--no-delivery").wait_ready()
    try:
        url = api.url + V1_PATH
        assert httpx.get(url, params=partner.params()).status_code == 200
        time.sleep(0.3)
        assert mail_files(settings) == []
    finally:
        api.kill()

    with ServerProcess(env) as restarted:
        wait_for(lambda: mail_files(settings), timeout=10)
        replay = httpx.get(restarted.url + V1_PATH, params=partner.params())
        assert replay.status_code == 200
        wait_for(lambda: rows(engine, outbox)[0].status == "sent")
        time.sleep(0.3)
        assert len(mail_files(settings)) == 1
        assert len(rows(engine, outbox)) == 1


def test_revoked_before_delivery_sends_nothing(
    env: dict[str, str], partner: Partner, settings: Settings, engine: Engine
) -> None:
    from click.testing import CliRunner

    from famprov.cli import main

    with ServerProcess(env, "--no-delivery") as api:
        url = api.url + V1_PATH
        order = httpx.get(url, params=partner.params()).json()["order_number"]
    assert CliRunner().invoke(main, ["license", "revoke", order]).exit_code == 0

    with ServerProcess(env):
        wait_for(lambda: rows(engine, outbox)[0].status == "cancelled")
        assert mail_files(settings) == []


def test_an_unwritable_mail_folder_keeps_the_invitation_pending_with_the_reason(
    settings: Settings,
    clock: FixedClock,
    engine: Engine,
    partner: Partner,
    tmp_path: Path,
) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the mail folder should be")
    broken = Settings(**{**settings.model_dump(), "mail_url": f"file://{blocked}"})
    with LiveServer(broken, clock) as live:
        httpx.get(live.url + V1_PATH, params=partner.params())
        row = wait_for(lambda: (r := rows(engine, outbox)[0]).last_error and r)
    assert row.status == "pending"
    assert row.last_error == f"could not write to {blocked}: File exists"
