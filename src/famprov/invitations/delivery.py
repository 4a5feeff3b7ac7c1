"""The outbox worker: sends the invitations the grants queued.

A grant writes its outbox row in the license's own transaction; this worker
picks rows up after commit. A row is claimed for a lease before it is sent,
so a worker that dies mid-delivery only delays it: once the lease runs out,
the row is due again.

A row's life: ``pending`` -> ``sent``; or ``pending`` -> ``failed`` when the
mail server refuses it for good (a 5xx reply) or when temporary failures
(4xx replies, refused connections, timeouts) outlast the retry window
(``FAMPROV_DELIVERY_RETRY_HOURS``, counted from the first failure); or
``pending`` -> ``cancelled`` when its license was revoked before it went out.
The reason of the last failure stays in ``last_error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jinja2
from email_validator import validate_email
from sqlalchemy import Engine, and_, or_, select, update

from famprov.clock import Clock
from famprov.config import Settings
from famprov.invitations import message, transports
from famprov.invitations.transports import DeliveryError, Transport
from famprov.keys import Keyring, token_context
from famprov.licenses.service import vault_url
from famprov.licenses.terms import REVOKED
from famprov.logs import log, redact_email, redact_emails
from famprov.store import WRITE
from famprov.store.schema import licenses, outbox, partners
from famprov.templating import environment


def backoff(attempts: int) -> timedelta:
    """Wait before retry number ``attempts``: doubling from 10 s, capped at
    one hour, with jitter so that failed rows do not retry in step."""
    base = min(10 * 2 ** max(attempts - 1, 0), 3600)
    return timedelta(seconds=base * random.uniform(0.5, 1.0))


@dataclass(frozen=True, slots=True)
class _Claimed:
    outbox_id: int
    order_number: str
    invitation: message.Invitation | None  # None when the license was revoked


class DeliveryWorker:
    """Delivers due outbox rows until stopped; woken early after each commit."""

    def __init__(
        self,
        engine: Engine,
        keyring: Keyring,
        transport: Transport,
        clock: Clock,
        *,
        public_url: str,
        sender: str,
        retry_for: timedelta = timedelta(hours=24),
        templates: jinja2.Environment | None = None,
        poll_seconds: float = 1.0,
        lease_seconds: float = 120,
        batch: int = 25,
    ) -> None:
        self._lease = timedelta(seconds=lease_seconds)
        self._engine = engine
        self._keyring = keyring
        self._transport = transport
        self._clock = clock
        self._public_url = public_url
        self._sender = sender
        self._retry_for = retry_for
        self._templates = templates or environment()
        self._poll = poll_seconds
        self._batch = batch
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    @classmethod
    def from_settings(
        cls, settings: Settings, engine: Engine, keyring: Keyring, clock: Clock
    ) -> DeliveryWorker:
        return cls(
            engine,
            keyring,
            transports.from_settings(settings),
            clock,
            public_url=settings.public_url,
            sender=settings.mail_from,
            retry_for=timedelta(hours=settings.delivery_retry_hours),
            templates=environment(settings.template_folder),
            poll_seconds=settings.delivery_poll_seconds,
            lease_seconds=settings.delivery_lease_seconds,
        )

    def wake(self) -> None:
        """Ask for a delivery round now, from the worker's own event loop
        (where the grants' commits are reported)."""
        if not self._stopping:
            self._wake.set()

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        while not self._stopping:
            try:
                done = await self.deliver_due()
            except Exception:
                log.exception("delivery_round_failed")
                done = 0
            if done >= self._batch:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll)
            self._wake.clear()
        await self._transport.close()

    def stop(self) -> None:
        self._stopping = True
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def deliver_due(self) -> int:
        """Send every row due now, up to one batch; return how many were tried."""
        claim = secrets.token_hex(8)
        rows = await asyncio.to_thread(self._claim, claim)
        for row in rows:
            await self._deliver(row, claim)
        return len(rows)

    async def _deliver(self, row: _Claimed, claim: str) -> None:
        if row.invitation is None:
            await asyncio.to_thread(self._finish, row.outbox_id, claim, "cancelled")
            return
        key = f"invitation-{row.order_number}-{row.outbox_id}"
        try:
            msg = message.build(
                row.invitation,
                sender=self._sender,
                sent_at=self._clock.now(),
                templates=self._templates,
            )
            await self._transport.send(msg, key)
        except Exception as exc:
            await asyncio.to_thread(self._failed, row.outbox_id, claim, exc)
            return
        await asyncio.to_thread(self._finish, row.outbox_id, claim, "sent")
        log.info(
            "invitation_sent",
            order_number=row.order_number,
            to=redact_email(row.invitation.to_email),
        )

    def _claim(self, claim: str) -> list[_Claimed]:
        now = self._clock.now()
        due = and_(
            outbox.c.status == "pending",
            outbox.c.next_attempt_at <= now,
            or_(outbox.c.locked_until.is_(None), outbox.c.locked_until <= now),
        )
        # Concurrent workers on PostgreSQL skip each other's rows instead of
        # queueing on them; SQLite has one writer and ignores the clause.
        ids = (
            select(outbox.c.id)
            .where(due)
            .order_by(outbox.c.id)
            .limit(self._batch)
            .with_for_update(skip_locked=True)
        )
        with self._engine.connect().execution_options(**WRITE) as conn, conn.begin():
            conn.execute(
                update(outbox)
                .where(outbox.c.id.in_(ids.scalar_subquery()), due)
                .values(
                    claim=claim,
                    locked_until=now + self._lease,
                    attempts=outbox.c.attempts + 1,
                )
            )
            rows = conn.execute(
                select(
                    outbox.c.id.label("outbox_id"),
                    licenses,
                    partners.c.name.label("partner_name"),
                )
                .join(licenses, licenses.c.id == outbox.c.license_id)
                .join(partners, partners.c.id == licenses.c.partner_id)
                .where(outbox.c.claim == claim)
                .order_by(outbox.c.id)
            ).all()
        return [self._claimed(row) for row in rows]

    def _claimed(self, row: Any) -> _Claimed:
        if row.status == REVOKED:
            return _Claimed(row.outbox_id, row.order_number, None)
        checked = validate_email(row.email, check_deliverability=False)
        return _Claimed(
            row.outbox_id,
            row.order_number,
            message.Invitation(
                to_email=checked.ascii_email or checked.normalized,
                smtputf8=checked.ascii_email is None,
                shown_email=checked.normalized,
                first_name=row.first_name,
                last_name=row.last_name,
                partner_name=row.partner_name,
                products=json.loads(row.products),
                expires_at=row.expires_at,
                vault_url=vault_url(
                    self._public_url,
                    self._keyring.open(
                        row.sealed_vault_token, token_context(row.order_number)
                    ),
                ),
            ),
        )

    def _finish(self, outbox_id: int, claim: str, status: str) -> None:
        self._update(
            outbox_id,
            claim,
            status=status,
            sent_at=self._clock.now() if status == "sent" else None,
            last_error=None,
            failing_since=None,
        )

    def _failed(self, outbox_id: int, claim: str, exc: Exception) -> None:
        now = self._clock.now()
        with self._engine.connect() as conn:
            attempts, since = conn.execute(
                select(outbox.c.attempts, outbox.c.failing_since).where(
                    outbox.c.id == outbox_id
                )
            ).one()
        since = since or now
        if isinstance(exc, DeliveryError):
            reason, permanent = exc.reason, exc.permanent
        else:
            # Only the type: the text of an unexpected error is not known to
            # be free of personal data.
            reason, permanent = f"{type(exc).__name__} (unexpected)", False
        if permanent or now - since >= self._retry_for:
            self._update(
                outbox_id,
                claim,
                status="failed",
                last_error=reason[:500],
                failing_since=since,
            )
            log.error(
                "invitation_failed",
                outbox_id=outbox_id,
                attempts=attempts,
                permanent=permanent,
                reason=redact_emails(reason[:500]),
            )
            return
        due: datetime = now + backoff(attempts)
        self._update(
            outbox_id,
            claim,
            next_attempt_at=due,
            last_error=reason[:500],
            failing_since=since,
        )
        log.warning(
            "invitation_retry",
            outbox_id=outbox_id,
            attempts=attempts,
            error=type(exc).__name__,
            reason=redact_emails(reason[:500]),
        )

    def _update(self, outbox_id: int, claim: str, **values: Any) -> None:
        with self._engine.connect().execution_options(**WRITE) as conn, conn.begin():
            conn.execute(
                update(outbox)
                .where(outbox.c.id == outbox_id, outbox.c.claim == claim)
                .values(locked_until=None, claim=None, **values)
            )
