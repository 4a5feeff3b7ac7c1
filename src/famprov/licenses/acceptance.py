"""What the person does with their vault URL: look at the invitation, accept it.

Looking changes nothing, whoever looks: mail scanners and link previewers
open links before people do. Accepting is the only change, and doing it
twice is the same as doing it once.
"""

from __future__ import annotations

import hmac
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, select, update

from famprov.clock import Clock
from famprov.errors import InvitationGoneError, NotFoundError
from famprov.keys import token_digest
from famprov.licenses.plans import product_name
from famprov.licenses.records import with_order_number
from famprov.licenses.terms import ACTIVE, INVITED, effective_status
from famprov.store import WRITE
from famprov.store.schema import legacy_vault_tokens, licenses, partners

# A vault token: the order number's twelve digits, then 256 bits in URL-safe
# base64 without padding (`famprov.licenses.service.new_identities`); one
# from before revision 0006 is those 256 bits alone.
_TOKEN = re.compile(r"(?P<order>[0-9]{12})?[A-Za-z0-9_-]{43}")


@dataclass(frozen=True, slots=True)
class InvitationView:
    """What the person's page shows: nothing beyond what their email said."""

    license_id: int
    first_name: str
    partner_name: str
    products: list[str]
    expires_at: datetime
    accepted_at: datetime | None

    @property
    def accepted(self) -> bool:
        return self.accepted_at is not None


def view_invitation(engine: Engine, clock: Clock, token: str) -> InvitationView:
    """The invitation behind ``token``; raise when there is none to show."""
    with engine.connect() as conn:
        return _read(conn, clock, token)


def accept_invitation(engine: Engine, clock: Clock, token: str) -> InvitationView:
    """Make the license ``active`` and record when; accepting again changes
    nothing."""
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        view = _read(conn, clock, token)
        if view.accepted:
            return view
        now = clock.now()
        # The status in the WHERE makes a concurrent second accept a no-op on
        # PostgreSQL too, whichever commits first.
        conn.execute(
            update(licenses)
            .where(licenses.c.id == view.license_id, licenses.c.status == INVITED)
            .values(status=ACTIVE, accepted_at=now)
        )
        return _read(conn, clock, token)


_SHOWN = select(
    licenses.c.id,
    licenses.c.vault_token_digest,
    licenses.c.first_name,
    licenses.c.products,
    licenses.c.status,
    licenses.c.expires_at,
    licenses.c.accepted_at,
    partners.c.name.label("partner_name"),
).join(partners, partners.c.id == licenses.c.partner_id)


def _find(conn: Connection, token: str) -> Any:
    """The license row behind ``token``, or None. Tokens are stored as their
    digest only (see `famprov.keys`)."""
    shape = _TOKEN.fullmatch(token)
    if shape is None:
        return None
    digest = token_digest(token)
    digits = shape["order"]
    if digits is None:
        legacy = legacy_vault_tokens
        return conn.execute(
            _SHOWN.join(legacy, legacy.c.license_id == licenses.c.id).where(
                legacy.c.vault_token_digest == digest
            )
        ).first()
    order_number = f"{digits[:8]}-{digits[8:]}"
    row = conn.execute(_SHOWN.where(with_order_number(conn, order_number))).first()
    if row is None or not hmac.compare_digest(row.vault_token_digest, digest):
        return None
    return row


def _read(conn: Connection, clock: Clock, token: str) -> InvitationView:
    row = _find(conn, token)
    if row is None:
        raise NotFoundError("no invitation at this address")
    if effective_status(row.status, row.expires_at, clock.now()) not in (
        INVITED,
        ACTIVE,
    ):
        raise InvitationGoneError()
    return InvitationView(
        license_id=row.id,
        first_name=row.first_name,
        partner_name=row.partner_name,
        products=[product_name(code) for code in json.loads(row.products)],
        expires_at=row.expires_at,
        accepted_at=row.accepted_at,
    )
