"""The mail settings and the message, tested directly."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from famprov.config import Settings
from famprov.invitations import message
from famprov.templating import environment

SECRET = "hunter2-Secret"


def mail(url: str, **values: object) -> Settings:
    return Settings(mail_url=url, **values)  # type: ignore[arg-type]


def test_smtp_urls_are_read_with_defaults_per_scheme() -> None:
    plain = mail("smtp://mail.example.com").smtp_server
    assert plain is not None
    assert (plain.host, plain.port, plain.starttls, plain.implicit_tls) == (
        "mail.example.com",
        25,
        False,
        False,
    )
    submission = mail(f"smtp://u%40x:{SECRET}@mail.example.com?starttls=true")
    server = submission.smtp_server
    assert server is not None
    assert (server.port, server.starttls, server.username) == (587, True, "u@x")
    assert server.password is not None
    assert server.password.reveal() == SECRET
    tls = mail("smtps://mail.example.com").smtp_server
    assert tls is not None
    assert (tls.port, tls.implicit_tls) == (465, True)
    assert mail("file://./famprov-mail").smtp_server is None


def test_the_password_shows_nowhere() -> None:
    settings = mail(f"smtps://famprov:{SECRET}@mail.example.com:2465")
    assert settings.mail_display == "smtps://famprov:***@mail.example.com:2465"
    for text in (repr(settings), str(settings), repr(settings.smtp_server)):
        assert SECRET not in text


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (f"smtp://famprov:{SECRET}@mail.example.com", "would send the password"),
        (f"smtps://famprov:{SECRET}@mail.example.com?starttls=true", "smtps://"),
        (f"smtp://famprov:{SECRET}@mail.example.com:99999", "port"),
        (f"smtp://famprov:{SECRET}@mail.example.com?tls=1", "no query parameter"),
        (f"smtp://famprov:{SECRET}@mail.example.com?starttls=maybe", "true or"),
        (f"smtp://famprov:{SECRET}@/", "needs a host"),
        ("http://mail.example.com", "must be file://FOLDER, smtp://"),
        ("smtp://famprov@mail.example.com", "both a user and a password"),
    ],
)
def test_a_bad_mail_url_is_refused_without_repeating_it(url: str, reason: str) -> None:
    with pytest.raises(ValidationError) as refused:
        mail(url)
    assert reason in str(refused.value)
    assert SECRET not in str(refused.value)


def test_a_password_over_plain_smtp_is_allowed_to_loopback_only() -> None:
    assert mail(f"smtp://u:{SECRET}@127.0.0.1:2525").smtp_server is not None
    assert mail(f"smtp://u:{SECRET}@localhost").smtp_server is not None


def invitation(**fields: object) -> message.Invitation:
    values: dict[str, object] = {
        "to_email": "ann@example.com",
        "smtputf8": False,
        "shown_email": "ann@example.com",
        "first_name": "Ann",
        "last_name": "Lee",
        "partner_name": "Acme",
        "products": ["family_plan"],
        "expires_at": datetime(2027, 3, 10, tzinfo=UTC),
        "vault_url": "http://famprov.example/invite/abc",
    }
    values.update(fields)
    return message.Invitation(**values)  # type: ignore[arg-type]


def test_no_field_of_the_message_can_inject_a_header() -> None:
    # Grants refuse control characters; this is the second line of defence.
    built = message.build(
        invitation(first_name="Ann\r\nBcc: eve@example.com", last_name="Lee\nX: y"),
        sender="famprov <famprov@example.com>",
        sent_at=datetime(2026, 3, 10, tzinfo=UTC),
        templates=environment(),
    )
    head = built.as_bytes().split(b"\r\n\r\n", 1)[0]
    assert b"\nBcc:" not in head
    assert b"\nX: y" not in head
    assert [name for name, _ in built.items()] == [
        "Subject",
        "From",
        "To",
        "Date",
        "Message-ID",
        "MIME-Version",
        "Content-Type",
    ]
    assert built["To"].addresses[0].display_name == "Ann Bcc: eve@example.com Lee X: y"
    assert built["Subject"] == "Ann Bcc: eve@example.com, your family plan is ready"


def test_html_alternative_escapes_what_the_text_one_keeps() -> None:
    built = message.build(
        invitation(partner_name="<b>Acme & Co</b>"),
        sender="famprov <famprov@example.com>",
        sent_at=datetime(2026, 3, 10, tzinfo=UTC),
        templates=environment(),
    )
    html = built.get_body(("html",))
    text = built.get_body(("plain",))
    assert html is not None
    assert text is not None
    assert "&lt;b&gt;Acme &amp; Co&lt;/b&gt;" in html.get_content()
    assert "<b>Acme & Co</b> has given you" in text.get_content()


@pytest.mark.parametrize(
    "sender", ["rewards", "a@example.com, b@example.com", "A\r\nBcc: e@example.com"]
)
def test_mail_from_must_be_one_address(sender: str) -> None:
    with pytest.raises(ValidationError, match="must be one address"):
        Settings(mail_from=sender)
    assert Settings(mail_from="Zoë <z@example.com>").mail_from == "Zoë <z@example.com>"
