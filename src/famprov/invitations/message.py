"""The invitation email: words from templates (`famprov.templating`), built
with the standard library's `email` package.

Headers are set through `EmailMessage` and `Address`, never pasted together
from strings, so no field can inject a header; names in any script are
encoded as the policy requires.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

import jinja2

from famprov.licenses.plans import product_name


@dataclass(frozen=True, slots=True)
class Invitation:
    """What one invitation says, read from the license it belongs to."""

    to_email: str
    smtputf8: bool
    # The address as the person knows it (an internationalised domain in its
    # own letters), for the words of the message; ``to_email`` is the one
    # the mail goes to.
    shown_email: str
    first_name: str
    last_name: str | None
    partner_name: str
    products: list[str]
    expires_at: datetime
    vault_url: str


def expiry_text(expires_at: datetime) -> str:
    return f"{expires_at.day} {expires_at:%B %Y}"


def one_line(text: str) -> str:
    """``text`` with every run of white space or control characters made one
    space: what a header may hold, whatever a template or a name contains.

    An RFC 2047 encoded word (``=?utf-8?b?...?=``) in a name would be decoded
    by the email package as it writes the header, control characters and
    all, so a name could add a header or a recipient; its ``=?`` is split,
    and the name shows as the text it is."""
    line = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return line.replace("=?", "= ?")


def context(inv: Invitation) -> dict[str, object]:
    """What the templates see."""
    return {
        "first_name": inv.first_name,
        "last_name": inv.last_name,
        "partner_name": inv.partner_name,
        "products": [product_name(code) for code in inv.products],
        "expires": expiry_text(inv.expires_at),
        "email": inv.shown_email,
        "vault_url": inv.vault_url,
    }


def build(
    inv: Invitation,
    *,
    sender: str,
    sent_at: datetime,
    templates: jinja2.Environment,
) -> EmailMessage:
    """Return the invitation as a multipart/alternative message."""
    values = context(inv)
    msg = EmailMessage(policy=policy.SMTPUTF8 if inv.smtputf8 else policy.SMTP)
    display = one_line(f"{inv.first_name} {inv.last_name or ''}")
    local, _, domain = inv.to_email.rpartition("@")
    msg["Subject"] = one_line(
        templates.get_template("mail/invitation-subject.txt").render(values)
    )
    msg["From"] = sender
    msg["To"] = Address(display_name=display, username=local, domain=domain)
    msg["Date"] = format_datetime(sent_at)
    msg["Message-ID"] = make_msgid(domain=_sender_domain(sender))
    # Quoted-printable keeps the message 7-bit clean for any relay.
    text = templates.get_template("mail/invitation.txt").render(values)
    html = templates.get_template("mail/invitation.html").render(values)
    msg.set_content(text, cte="quoted-printable")
    msg.add_alternative(html, subtype="html", cte="quoted-printable")
    return msg


def _sender_domain(sender: str) -> str:
    address = sender.rpartition("<")[2].rstrip(">").strip()
    return address.rpartition("@")[2] or "famprov.invalid"
