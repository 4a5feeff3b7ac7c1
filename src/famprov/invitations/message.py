"""The invitation email, built with the standard library's `email` package.

Headers are set through `EmailMessage` and `Address`, never pasted together
from strings, so no field can inject a header; names in any script are
encoded as the policy requires.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from famprov.licenses.plans import product_name


@dataclass(frozen=True, slots=True)
class Invitation:
    """What one invitation says, read from the license it belongs to."""

    to_email: str
    smtputf8: bool
    first_name: str
    last_name: str | None
    partner_name: str
    products: list[str]
    expires_at: datetime
    vault_url: str


def expiry_text(expires_at: datetime) -> str:
    return f"{expires_at.day} {expires_at:%B %Y}"


def text_body(inv: Invitation) -> str:
    products = "\n".join(f"  - {product_name(code)}" for code in inv.products)
    return (
        f"Hello {inv.first_name},\n\n"
        f"{inv.partner_name} has given you a free family plan. It includes:\n\n"
        f"{products}\n\n"
        f"Your plan runs until {expiry_text(inv.expires_at)} (UTC).\n\n"
        f"Create your account with this email address ({inv.to_email}) here:\n\n"
        f"  {inv.vault_url}\n\n"
        "If you were not expecting this invitation, you can ignore it.\n"
    )


def html_body(inv: Invitation) -> str:
    e = html.escape
    products = "".join(f"<li>{e(product_name(code))}</li>" for code in inv.products)
    return (
        '<!doctype html><html><body style="font-family: sans-serif">'
        f"<p>Hello {e(inv.first_name)},</p>"
        f"<p>{e(inv.partner_name)} has given you a free family plan. "
        f"It includes:</p><ul>{products}</ul>"
        f"<p>Your plan runs until {e(expiry_text(inv.expires_at))} (UTC).</p>"
        f"<p>Create your account with this email address "
        f"({e(inv.to_email)}):</p>"
        f'<p><a href="{e(inv.vault_url, quote=True)}">Create your account</a></p>'
        "<p>If you were not expecting this invitation, you can ignore it.</p>"
        "</body></html>"
    )


def build(inv: Invitation, *, sender: str, sent_at: datetime) -> EmailMessage:
    """Return the invitation as a multipart/alternative message."""
    msg = EmailMessage(policy=policy.SMTPUTF8 if inv.smtputf8 else policy.SMTP)
    display = (
        inv.first_name if not inv.last_name else f"{inv.first_name} {inv.last_name}"
    )
    local, _, domain = inv.to_email.rpartition("@")
    msg["Subject"] = f"{inv.first_name}, your family plan is ready"
    msg["From"] = sender
    msg["To"] = Address(display_name=display, username=local, domain=domain)
    msg["Date"] = format_datetime(sent_at)
    msg["Message-ID"] = make_msgid(domain=_sender_domain(sender))
    # Quoted-printable keeps the message 7-bit clean for any relay.
    msg.set_content(text_body(inv), cte="quoted-printable")
    msg.add_alternative(html_body(inv), subtype="html", cte="quoted-printable")
    return msg


def _sender_domain(sender: str) -> str:
    address = sender.rpartition("<")[2].rstrip(">").strip()
    return address.rpartition("@")[2] or "famprov.invalid"
