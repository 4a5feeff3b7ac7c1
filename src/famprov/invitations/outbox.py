"""The outbox as the operator sees it: listed, and failed rows put back."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, select, update

from famprov.clock import Clock
from famprov.errors import NotFoundError, OperatorError
from famprov.store import WRITE
from famprov.store.schema import licenses, outbox

PENDING, SENT, FAILED, CANCELLED = "pending", "sent", "failed", "cancelled"
STATUSES = (PENDING, SENT, FAILED, CANCELLED)


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    id: int
    order_number: str
    email: str
    status: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    sent_at: datetime | None
    last_error: str | None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            out[name] = value.isoformat() if isinstance(value, datetime) else value
        return out


def _record(row: Row[Any]) -> OutboxRecord:
    return OutboxRecord(
        id=row.id,
        order_number=row.order_number,
        email=row.email,
        status=row.status,
        attempts=row.attempts,
        created_at=row.created_at,
        next_attempt_at=row.next_attempt_at,
        sent_at=row.sent_at,
        last_error=row.last_error,
    )


def _select() -> Any:
    return (
        select(outbox, licenses.c.order_number, licenses.c.email)
        .join(licenses, licenses.c.id == outbox.c.license_id)
        .order_by(outbox.c.id)
    )


def list_outbox(engine: Engine, *, status: str | None = None) -> list[OutboxRecord]:
    """Every invitation queued, oldest first; only ``status`` when given."""
    query = _select()
    if status is not None:
        query = query.where(outbox.c.status == status)
    with engine.connect() as conn:
        return [_record(row) for row in conn.execute(query)]


def retry(engine: Engine, clock: Clock, outbox_id: int) -> OutboxRecord:
    """Make a failed (or still pending) invitation due now, with a fresh
    retry window."""
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        row = conn.execute(select(outbox.c.status).where(outbox.c.id == outbox_id))
        status = row.scalar_one_or_none()
        if status is None:
            raise NotFoundError(f"no outbox row {outbox_id}")
        if status not in (FAILED, PENDING):
            raise OperatorError(
                f"outbox row {outbox_id} is {status}; only failed or pending "
                "rows can be retried"
            )
        _make_due(conn, clock, outbox.c.id == outbox_id)
        return _record(conn.execute(_select().where(outbox.c.id == outbox_id)).one())


def retry_all_failed(engine: Engine, clock: Clock) -> int:
    """Put every failed invitation back in the queue; return how many."""
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        return _make_due(conn, clock, outbox.c.status == FAILED)


def _make_due(conn: Connection, clock: Clock, where: Any) -> int:
    # A row a worker holds right now keeps its claim: the worker's own
    # update, which names the claim, then lands as usual.
    result = conn.execute(
        update(outbox)
        .where(where, outbox.c.claim.is_(None))
        .values(
            status=PENDING,
            attempts=0,
            next_attempt_at=clock.now(),
            failing_since=None,
        )
    )
    return int(result.rowcount)


def queue_invitation(conn: Connection, license_id: int, now: datetime) -> int:
    """Queue one more invitation for a license, in the caller's transaction."""
    result = conn.execute(
        outbox.insert().values(
            license_id=license_id,
            kind="invitation",
            status=PENDING,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
    )
    assert result.inserted_primary_key is not None
    return int(result.inserted_primary_key[0])
