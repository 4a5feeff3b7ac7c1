"""Invitations through a real SMTP server on loopback: delivery, failures,
retries, the operator's commands, encodings and TLS."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from click.testing import CliRunner, Result
from sqlalchemy import Engine

from famprov.cli import main
from famprov.clock import FixedClock
from famprov.config import Settings
from famprov.store.schema import outbox
from mailserver import MailServer
from support import V1_PATH, LiveServer, Partner, ServerProcess, rows, wait_for


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def with_mail(settings: Settings, **values: Any) -> Settings:
    return Settings(**{**settings.model_dump(), **values})


@pytest.fixture
def mail() -> Iterator[MailServer]:
    with MailServer() as server:
        yield server


@pytest.fixture
def smtp_settings(settings: Settings, mail: MailServer) -> Settings:
    return with_mail(
        settings,
        mail_url=mail.url(),
        mail_from="Acme Rewards <rewards@famprov.example>",
    )


@pytest.fixture
def smtp_http(
    smtp_settings: Settings,
    clock: FixedClock,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[httpx.Client]:
    # The CLI in these tests reads the same store as the server, and runs on
    # the wall clock: the server's clock starts there too.
    monkeypatch.setenv("FAMPROV_DATABASE_URL", smtp_settings.database_url)
    if smtp_settings.secret_key is not None:
        key = smtp_settings.secret_key.get_secret_value()
        monkeypatch.setenv("FAMPROV_SECRET_KEY", key)
    clock.set(datetime.now(UTC))
    with (
        LiveServer(smtp_settings, clock) as live,
        httpx.Client(base_url=live.url, timeout=10) as client,
    ):
        yield client


def outbox_rows(engine: Engine) -> list[Any]:
    # By id: PostgreSQL returns rows in no fixed order once one is updated.
    return sorted(rows(engine, outbox), key=lambda row: row.id)


def outbox_row(engine: Engine, index: int = 0) -> Any:
    return outbox_rows(engine)[index]


def catch_up(clock: FixedClock) -> None:
    """Bring the server's clock to the time an operator command just used."""
    clock.set(datetime.now(UTC))


def settled(engine: Engine, attempts: int) -> Any:
    """The first outbox row once its attempt number ``attempts`` is over (a
    worker counts an attempt when it claims the row, before it sends)."""
    return wait_for(
        lambda: (r := outbox_row(engine)).attempts == attempts and r.claim is None and r
    )


def test_invitation_is_delivered_over_smtp_from_the_configured_sender(
    smtp_http: httpx.Client, partner: Partner, mail: MailServer, engine: Engine
) -> None:
    body = smtp_http.get(V1_PATH, params=partner.params()).json()

    [received] = wait_for(lambda: mail.messages)
    assert received.mail_from == "rewards@famprov.example"
    assert received.rcpt_tos == ["ann@example.com"]
    message = received.message
    sender = message["From"].addresses[0]
    assert (sender.display_name, sender.addr_spec) == (
        "Acme Rewards",
        "rewards@famprov.example",
    )
    assert message["To"].addresses[0].display_name == "Ann Lee"
    assert body["vault_url"] in message.get_body(("plain",)).get_content()
    assert body["vault_url"] in message.get_body(("html",)).get_content()
    assert "SMTPUTF8" not in received.mail_options
    wait_for(lambda: outbox_row(engine).status == "sent")


def test_one_connection_carries_many_invitations(
    smtp_http: httpx.Client, partner: Partner, mail: MailServer
) -> None:
    for n in range(3):
        params = partner.params(transaction_id=str(n), email=f"p{n}@example.com")
        assert smtp_http.get(V1_PATH, params=params).status_code == 200

    wait_for(lambda: len(mail.messages) == 3)
    assert {m.connection for m in mail.messages} == {1}
    assert mail.connections == 1


def test_temporary_failure_waits_its_backoff_on_the_clock_then_delivers(
    smtp_http: httpx.Client,
    partner: Partner,
    mail: MailServer,
    engine: Engine,
    clock: FixedClock,
) -> None:
    mail.fail_next(1, "451 4.3.0 Mailbox busy, try later")
    start = clock.now()
    assert smtp_http.get(V1_PATH, params=partner.params()).status_code == 200

    row = wait_for(lambda: (r := outbox_row(engine)).last_error and r)
    assert row.status == "pending"
    assert row.attempts == 1
    assert "451 4.3.0 Mailbox busy" in row.last_error
    # The first retry waits 10 s, less up to half of it as jitter.
    assert start + timedelta(seconds=5) <= row.next_attempt_at
    assert row.next_attempt_at <= start + timedelta(seconds=10)
    assert row.failing_since == start

    clock.set(row.next_attempt_at - timedelta(seconds=1))
    with pytest.raises(AssertionError):
        wait_for(lambda: mail.messages, timeout=0.5)

    clock.set(row.next_attempt_at)
    wait_for(lambda: mail.messages)
    row = wait_for(lambda: (r := outbox_row(engine)).status == "sent" and r)
    assert (row.attempts, row.last_error, row.failing_since) == (2, None, None)


def test_temporary_failures_past_the_retry_window_mark_the_invitation_failed(
    smtp_http: httpx.Client,
    partner: Partner,
    mail: MailServer,
    engine: Engine,
    clock: FixedClock,
) -> None:
    mail.refuse("421 4.7.0 Try again later")
    start = clock.now()
    smtp_http.get(V1_PATH, params=partner.params())
    settled(engine, 1)

    # Still inside the default day: one more try, still pending.
    clock.set(start + timedelta(hours=23))
    assert settled(engine, 2).status == "pending"

    clock.set(start + timedelta(hours=24, seconds=1))
    row = wait_for(lambda: (r := outbox_row(engine)).status == "failed" and r)
    assert row.attempts == 3
    assert "421 4.7.0 Try again later" in row.last_error
    assert mail.messages == []


def test_permanent_refusal_fails_keeps_the_reply_and_the_operator_retries(
    smtp_http: httpx.Client,
    partner: Partner,
    mail: MailServer,
    engine: Engine,
    clock: FixedClock,
) -> None:
    mail.refuse("550 5.1.1 No such user here")
    for n in range(2):
        params = partner.params(transaction_id=str(n), email=f"p{n}@example.com")
        smtp_http.get(V1_PATH, params=params)
    wait_for(lambda: all(r.status == "failed" for r in outbox_rows(engine)))
    assert [r.attempts for r in outbox_rows(engine)] == [1, 1]  # never retried

    listed = cli("outbox", "list", "--status", "failed", "--json")
    assert listed.exit_code == 0, listed.output
    failed = json.loads(listed.stdout)
    assert [f["email"] for f in failed] == ["p0@example.com", "p1@example.com"]
    assert "550 5.1.1 No such user here" in failed[0]["last_error"]
    table = cli("outbox", "list")
    assert "550 5.1.1 No such user here" in table.output
    assert json.loads(cli("outbox", "list", "--status", "sent", "--json").stdout) == []

    mail.accept()
    first = failed[0]["id"]
    retried = cli("outbox", "retry", str(first))
    assert retried.exit_code == 0, retried.output
    catch_up(clock)
    assert f"outbox row {first}" in retried.output
    wait_for(lambda: [m.rcpt_tos for m in mail.messages] == [["p0@example.com"]])
    wait_for(lambda: outbox_row(engine, 0).status == "sent")
    assert outbox_row(engine, 1).status == "failed"

    again = cli("outbox", "retry", str(first))
    assert again.exit_code == 1
    assert "is sent; only failed or pending rows can be retried" in again.output

    everything = cli("outbox", "retry", "--all-failed")
    assert everything.exit_code == 0, everything.output
    assert "1 failed invitation(s) due now" in everything.output
    catch_up(clock)
    wait_for(lambda: len(mail.messages) == 2)
    assert mail.messages[1].rcpt_tos == ["p1@example.com"]


def test_outbox_retry_refuses_bad_input_in_one_line(
    env: dict[str, str], engine: Engine
) -> None:
    missing = cli("outbox", "retry", "999")
    assert missing.exit_code == 1
    assert missing.stderr.splitlines()[-1] == "famprov: error: no outbox row 999"
    both = cli("outbox", "retry", "1", "--all-failed")
    assert both.exit_code == 2
    assert "not both and not neither" in both.output
    wrong = cli("outbox", "list", "--status", "lost")
    assert wrong.exit_code == 2
    assert "'lost' is not one of" in wrong.output


def test_license_resend_delivers_the_same_link_again(
    smtp_http: httpx.Client,
    partner: Partner,
    mail: MailServer,
    engine: Engine,
    clock: FixedClock,
) -> None:
    body = smtp_http.get(V1_PATH, params=partner.params()).json()
    order = body["order_number"]
    wait_for(lambda: outbox_row(engine).status == "sent")

    resent = cli("license", "resend", order)
    assert resent.exit_code == 0, resent.output
    assert f"invitation for {order} queued" in resent.output
    catch_up(clock)
    second = wait_for(lambda: len(mail.messages) == 2 and mail.messages[1])
    assert body["vault_url"] in second.message.get_body(("plain",)).get_content()
    wait_for(lambda: outbox_row(engine, 1).status == "sent")
    shown = json.loads(cli("license", "show", order, "--json").stdout)
    assert shown["invitation"] == "sent"

    assert cli("license", "revoke", order).exit_code == 0
    refused = cli("license", "resend", order)
    assert refused.exit_code == 1
    assert refused.stderr.splitlines()[-1] == (
        f"famprov: error: license {order} is revoked; only an invited license "
        "gets its invitation again"
    )
    unknown = cli("license", "resend", "00000000-0000")
    assert "no license with order number '00000000-0000'" in unknown.output


def test_license_resend_refuses_while_an_invitation_is_pending(
    smtp_http: httpx.Client, partner: Partner, mail: MailServer, engine: Engine
) -> None:
    mail.refuse("451 4.3.0 Busy")
    order = smtp_http.get(V1_PATH, params=partner.params()).json()["order_number"]
    settled(engine, 1)
    refused = cli("license", "resend", order)
    assert refused.exit_code == 1
    assert "is still pending (outbox row" in refused.output
    assert len(rows(engine, outbox)) == 1


def test_names_in_any_script_and_an_idn_domain_arrive_intact(
    smtp_http: httpx.Client, partner: Partner, mail: MailServer
) -> None:
    params = partner.params(
        first_name="Зоя", last_name="李", email="ann@bücher.example"
    )
    assert smtp_http.get(V1_PATH, params=params).status_code == 200

    [received] = wait_for(lambda: mail.messages)
    assert received.rcpt_tos == ["ann@xn--bcher-kva.example"]
    assert "SMTPUTF8" not in received.mail_options
    head = received.data.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()  # RFC 2047 encoded words
    message = received.message
    assert message["Subject"] == "Зоя, your family plan is ready"
    assert message["To"].addresses[0].display_name == "Зоя 李"
    assert message.get_body(("plain",)).get_content().startswith("Hello Зоя,")
    # The words show the address as the person knows it.
    assert "(ann@bücher.example)" in message.get_body(("plain",)).get_content()


def test_non_ascii_local_part_goes_with_smtputf8(
    smtp_http: httpx.Client, partner: Partner, mail: MailServer, engine: Engine
) -> None:
    params = partner.params(email="zoë@example.com")
    assert smtp_http.get(V1_PATH, params=params).status_code == 200

    [received] = wait_for(lambda: mail.messages)
    assert "SMTPUTF8" in received.mail_options
    assert received.rcpt_tos == ["zoë@example.com"]
    assert received.message["To"].addresses[0].username == "zoë"


def test_non_ascii_local_part_fails_with_the_reason_without_smtputf8(
    settings: Settings, clock: FixedClock, engine: Engine, partner: Partner
) -> None:
    with MailServer(smtputf8=False) as mail:
        plain = with_mail(settings, mail_url=mail.url())
        with LiveServer(plain, clock) as live:
            params = partner.params(email="zoë@example.com")
            assert httpx.get(live.url + V1_PATH, params=params).status_code == 200
            row = wait_for(lambda: (r := outbox_row(engine)).status == "failed" and r)
        assert mail.messages == []
    assert "needs SMTPUTF8" in row.last_error
    assert "does not offer" in row.last_error


def test_an_operator_template_cannot_inject_a_header(
    settings: Settings,
    clock: FixedClock,
    engine: Engine,
    partner: Partner,
    mail: MailServer,
    tmp_path: Path,
) -> None:
    folder = tmp_path / "templates"
    (folder / "mail").mkdir(parents=True)
    (folder / "mail" / "invitation-subject.txt").write_text(
        "Welcome {{ first_name }}\r\nBcc: eve@example.com\n"
    )
    custom = with_mail(settings, mail_url=mail.url(), template_folder=folder)
    with LiveServer(custom, clock) as live:
        httpx.get(live.url + V1_PATH, params=partner.params())
        [received] = wait_for(lambda: mail.messages)
    assert received.rcpt_tos == ["ann@example.com"]
    message = received.message
    assert message["Bcc"] is None
    assert message["Subject"] == "Welcome Ann Bcc: eve@example.com"
    # The other templates are still famprov's own.
    assert message.get_body(("plain",)).get_content().startswith("Hello Ann,")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


@pytest.mark.parametrize("scheme", ["starttls", "smtps"])
def test_tls_with_a_private_ca_and_a_login(
    scheme: str,
    settings: Settings,
    clock: FixedClock,
    engine: Engine,
    partner: Partner,
    ca: trustme.CA,
    tmp_path: Path,
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    tls = server_context(ca)
    login = ("famprov", "p@ss:w/rd")
    server = (
        MailServer(starttls=tls, login=login)
        if scheme == "starttls"
        else MailServer(implicit_tls=tls, login=login)
    )
    with server as mail:
        url = (
            mail.url("smtp", "famprov:p%40ss%3Aw%2Frd", "?starttls=true")
            if scheme == "starttls"
            else mail.url("smtps", "famprov:p%40ss%3Aw%2Frd")
        )
        secured = with_mail(settings, mail_url=url, mail_tls_ca_file=ca_file)
        with LiveServer(secured, clock) as live:
            httpx.get(live.url + V1_PATH, params=partner.params())
            [received] = wait_for(lambda: mail.messages)
            wait_for(lambda: outbox_row(engine).status == "sent")
    assert received.rcpt_tos == ["ann@example.com"]


def test_an_unknown_certificate_is_refused_unless_checks_are_off(
    settings: Settings,
    clock: FixedClock,
    engine: Engine,
    partner: Partner,
    ca: trustme.CA,
) -> None:
    with MailServer(implicit_tls=server_context(ca)) as mail:
        strict = with_mail(settings, mail_url=mail.url("smtps"))
        with LiveServer(strict, clock) as live:
            httpx.get(live.url + V1_PATH, params=partner.params())
            row = wait_for(lambda: (r := outbox_row(engine)).last_error and r)
        assert row.status == "pending"  # a temporary failure: the operator fixes it
        assert "CERTIFICATE_VERIFY_FAILED" in row.last_error
        assert mail.messages == []

        lax = with_mail(strict, mail_tls_verify=False)
        clock.set(row.next_attempt_at)
        with LiveServer(lax, clock):
            wait_for(lambda: mail.messages)
            wait_for(lambda: outbox_row(engine).status == "sent")


def test_a_refused_login_is_retried_and_no_password_is_shown_anywhere(
    env: dict[str, str],
    partner: Partner,
    engine: Engine,
    settings: Settings,
    tmp_path: Path,
) -> None:
    password = "Wr0ng-Pa55word-4-tests"
    log_path = tmp_path / "server.log"
    with MailServer(login=("famprov", "right")) as mail:
        url = mail.url("smtp", f"famprov:{password}")
        server = ServerProcess({**env, "FAMPROV_MAIL_URL": url}, log=log_path)
        with server:
            httpx.get(server.url + V1_PATH, params=partner.params())
            row = wait_for(lambda: (r := outbox_row(engine)).last_error and r)
        assert mail.messages == []
    assert row.status == "pending"
    assert "refused famprov's login: 535" in row.last_error

    shown = cli("outbox", "list")
    text = log_path.read_text()
    assert "famprov:***@127.0.0.1" in text  # the service_started line
    for place in (text, row.last_error, shown.output, repr(with_mail(settings))):
        assert password not in place
    custom = with_mail(settings, mail_url=url)
    assert password not in repr(custom)
    assert password not in custom.mail_display


def test_starttls_required_but_not_offered_sends_nothing_in_clear(
    settings: Settings,
    clock: FixedClock,
    engine: Engine,
    partner: Partner,
    mail: MailServer,
) -> None:
    wanted = with_mail(settings, mail_url=mail.url(query="?starttls=true"))
    with LiveServer(wanted, clock) as live:
        httpx.get(live.url + V1_PATH, params=partner.params())
        row = wait_for(lambda: (r := outbox_row(engine)).last_error and r)
    assert row.status == "pending"
    assert "STARTTLS" in row.last_error
    assert mail.messages == []
