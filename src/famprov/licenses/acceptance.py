"""What the person does with their vault URL: look at the invitation, accept it.

Looking changes nothing, whoever looks: mail scanners and link previewers
open links before people do. Accepting is the only change, and doing it
twice is the same as doing it once.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, select, update

from famprov.clock import Clock
from famprov.errors import InvitationGoneError, NotFoundError
from famprov.keys import token_digest
from famprov.licenses.plans import product_name
from famprov.licenses.service import ACTIVE, INVITED, effective_status
from famprov.store import WRITE
from famprov.store.schema import licenses, partners

# A vault token: 256 bits, URL-safe base64 without padding.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")


@dataclass(frozen=True, slots=True)
class InvitationView:
    """What the person's page shows: nothing beyond what their email said."""

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
            .where(
                licenses.c.vault_token_digest == token_digest(token),
                licenses.c.status == INVITED,
            )
            .values(status=ACTIVE, accepted_at=now)
        )
        return _read(conn, clock, token)


def _read(conn: Connection, clock: Clock, token: str) -> InvitationView:
    if not _TOKEN.fullmatch(token):
        raise NotFoundError("no invitation at this address")
    row = conn.execute(
        select(
            licenses.c.first_name,
            licenses.c.products,
            licenses.c.status,
            licenses.c.expires_at,
            licenses.c.accepted_at,
            partners.c.name.label("partner_name"),
        )
        .join(partners, partners.c.id == licenses.c.partner_id)
        # Stored as its digest only: see `famprov.keys`.
        .where(licenses.c.vault_token_digest == token_digest(token))
    ).first()
    if row is None:
        raise NotFoundError("no invitation at this address")
    if effective_status(row.status, row.expires_at, clock.now()) not in (
        INVITED,
        ACTIVE,
    ):
        raise InvitationGoneError()
    return InvitationView(
        first_name=row.first_name,
        partner_name=row.partner_name,
        products=[product_name(code) for code in json.loads(row.products)],
        expires_at=row.expires_at,
        accepted_at=row.accepted_at,
    )
