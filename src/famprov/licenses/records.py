"""Licenses as the operator sees them: listed, shown, revoked, invited again."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Row,
    Select,
    or_,
    select,
    update,
)

from famprov.clock import Clock
from famprov.errors import NotFoundError, OperatorError
from famprov.invitations.outbox import PENDING, queue_invitation
from famprov.licenses.numbers import MAX_ID, OrderNumbers
from famprov.licenses.terms import INVITED, LIVE, REVOKED, effective_status
from famprov.store import WRITE
from famprov.store.raw import RawSQL
from famprov.store.schema import legacy_order_numbers, licenses, outbox, partners


@dataclass(frozen=True, slots=True)
class LicenseRecord:
    order_number: str
    partner_name: str
    transaction_id: str
    email: str
    first_name: str
    last_name: str | None
    plan: str
    products: list[str]
    status: str
    created_at: datetime
    starts_at: datetime
    expires_at: datetime
    accepted_at: datetime | None
    revoked_at: datetime | None
    invitation: str | None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            out[name] = value.isoformat() if isinstance(value, datetime) else value
        return out


def _query() -> Select[Any]:
    invitation = (
        select(outbox.c.status)
        .where(outbox.c.license_id == licenses.c.id)
        .order_by(outbox.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    return (
        select(licenses, partners.c.name.label("partner_name"), invitation.label("inv"))
        .join(partners, partners.c.id == licenses.c.partner_id)
        .order_by(licenses.c.created_at, licenses.c.id)
    )


def _record(row: Row[Any], now: datetime) -> LicenseRecord:
    return LicenseRecord(
        order_number=row.order_number,
        partner_name=row.partner_name,
        transaction_id=row.transaction_id,
        email=row.email,
        first_name=row.first_name,
        last_name=row.last_name,
        plan=row.plan,
        products=json.loads(row.products),
        status=effective_status(row.status, row.expires_at, now),
        created_at=row.created_at,
        starts_at=row.starts_at,
        expires_at=row.expires_at,
        accepted_at=row.accepted_at,
        revoked_at=row.revoked_at,
        invitation=row.inv,
    )


def list_licenses(
    engine: Engine, clock: Clock, *, partner: str | None = None
) -> Sequence[LicenseRecord]:
    query = _query()
    if partner is not None:
        query = query.where(partners.c.name == partner)
    now = clock.now()
    with engine.connect() as conn:
        if (
            partner is not None
            and conn.execute(
                select(partners.c.id).where(partners.c.name == partner)
            ).first()
            is None
        ):
            raise NotFoundError(f"no partner named {partner!r}")
        return [_record(row, now) for row in conn.execute(query)]


def with_order_number(conn: Connection, order_number: str) -> ColumnElement[bool]:
    """The test that finds the license with this order number: by the id it
    leads back to (`famprov.licenses.numbers`), or through
    `legacy_order_numbers` for a number of before revision 0007."""
    legacy = select(legacy_order_numbers.c.license_id).where(
        legacy_order_numbers.c.order_number == order_number
    )
    license_id = OrderNumbers.load(RawSQL.on(conn)).license_id(order_number)
    by_id: ColumnElement[bool] = licenses.c.id.in_(legacy)
    if license_id is not None and license_id <= MAX_ID:
        by_id = or_(licenses.c.id == license_id, by_id)
    return (licenses.c.order_number == order_number) & by_id


def _no_license(order_number: str) -> NotFoundError:
    # An order number is 13 characters; whatever was typed is shown no longer
    # than a few of those.
    shown = repr(order_number[:40]) + ("..." if len(order_number) > 40 else "")
    return NotFoundError(f"no license with order number {shown}")


def get_license(engine: Engine, clock: Clock, order_number: str) -> LicenseRecord:
    with engine.connect() as conn:
        row = conn.execute(
            _query().where(with_order_number(conn, order_number))
        ).first()
    if row is None:
        raise _no_license(order_number)
    return _record(row, clock.now())


def revoke_license(engine: Engine, clock: Clock, order_number: str) -> LicenseRecord:
    """Revoke a live license; it stays on record, and its person may be
    granted again."""
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        row = conn.execute(
            select(licenses.c.id, licenses.c.status, licenses.c.expires_at).where(
                with_order_number(conn, order_number)
            )
        ).first()
        if row is None:
            raise _no_license(order_number)
        status = effective_status(row.status, row.expires_at, clock.now())
        if status not in LIVE:
            raise OperatorError(f"license {order_number} is {status}, not revocable")
        conn.execute(
            update(licenses)
            .where(licenses.c.id == row.id)
            .values(status=REVOKED, revoked_at=clock.now(), live_email_key=None)
        )
    return get_license(engine, clock, order_number)


def resend_invitation(engine: Engine, clock: Clock, order_number: str) -> int:
    """Queue a fresh invitation for a license still waiting to be accepted;
    return its outbox row.

    The vault URL stays the same: the partner's answer to the grant holds
    it, and a replay of the grant must keep answering the same.
    """
    now = clock.now()
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        row = conn.execute(
            select(licenses.c.id, licenses.c.status, licenses.c.expires_at).where(
                with_order_number(conn, order_number)
            )
        ).first()
        if row is None:
            raise _no_license(order_number)
        status = effective_status(row.status, row.expires_at, now)
        if status != INVITED:
            raise OperatorError(
                f"license {order_number} is {status}; only an invited license "
                "gets its invitation again"
            )
        waiting = conn.execute(
            select(outbox.c.id).where(
                outbox.c.license_id == row.id, outbox.c.status == PENDING
            )
        ).first()
        if waiting is not None:
            raise OperatorError(
                f"an invitation for license {order_number} is still pending "
                f"(outbox row {waiting.id}); famprov outbox retry {waiting.id} "
                "sends it now"
            )
        return queue_invitation(conn, row.id, now)
