"""What happens when a partner grants a license, from query to commit.

`GrantService.grant` runs the checks in the order the contract fixes:

1. required parameters present and not blank            400
2. partner known and enabled, hash verifies             401
3. field syntax, lengths, characters                    400
4. idempotency and conflicts (in the write)             409

Step 4 runs inside the batching writer's transaction (`record`), where the
license row and its invitation's outbox row are written together: if one is
on disk, so is the other, and no caller hears 200 before the commit.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import structlog
from sqlalchemy import Connection, Engine, insert, select, update

from famprov.clock import Clock
from famprov.errors import ExistingLicenseError, TransactionConflictError
from famprov.licenses import fields
from famprov.licenses.plans import DEFAULT_PLAN, Plan
from famprov.licenses.terms import years_after
from famprov.partners.service import PartnerDirectory, authenticate
from famprov.store.schema import licenses, outbox
from famprov.store.writer import BatchWriter

INVITED, ACTIVE, EXPIRED, REVOKED = "invited", "active", "expired", "revoked"
LIVE = (INVITED, ACTIVE)


@dataclass(frozen=True, slots=True)
class GrantJob:
    """A grant that passed steps 1 to 3, ready to be written."""

    partner_id: int
    transaction_id: str
    person: fields.Person
    plan: Plan


@dataclass(frozen=True, slots=True)
class Grant:
    """The answer to a grant: the original one when the call is a replay."""

    order_number: str
    vault_token: str
    replayed: bool


def new_order_number() -> str:
    """Eight digits, a hyphen, four digits; random, so never sequential."""
    return f"{secrets.randbelow(10**8):08d}-{secrets.randbelow(10**4):04d}"


def new_vault_token() -> str:
    """256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def vault_url(public_url: str, token: str) -> str:
    """The link that lets the person create their account."""
    return f"{public_url}/invite/{token}"


def effective_status(status: str, expires_at: datetime, now: datetime) -> str:
    """A live license whose term is over is expired, written so or not."""
    if status in LIVE and expires_at <= now:
        return EXPIRED
    return status


class GrantService:
    """The partner-facing grant operation, and the writer that records it."""

    def __init__(
        self,
        engine: Engine,
        directory: PartnerDirectory,
        clock: Clock,
        *,
        batch_size: int = 256,
        after_commit: Callable[[], None] | None = None,
    ) -> None:
        self._directory = directory
        self._clock = clock
        self._writer: BatchWriter[GrantJob, Grant] = BatchWriter(
            engine, self.record, max_batch=batch_size, after_commit=after_commit
        )

    def start(self) -> None:
        self._writer.start()

    def stop(self) -> None:
        self._writer.stop()

    async def grant(self, params: dict[str, str]) -> Grant:
        """Grant the person in ``params`` a license, or raise why not."""
        raw = fields.require(params)
        partner = await self._directory.get(raw.partner_name)
        email = authenticate(partner, raw.email, raw.hash)
        assert partner is not None
        # From here on every log line of this request names the partner.
        structlog.contextvars.bind_contextvars(partner=partner.name)
        person = fields.validate(raw, email)
        job = GrantJob(partner.id, raw.transaction_id, person, DEFAULT_PLAN)
        return await self._writer.write(job)

    def record(self, conn: Connection, job: GrantJob) -> Grant:
        """Write the license and its invitation, or answer a replay.

        Runs in the writer's transaction. It raises a domain error only
        before it has written anything, so a refused job leaves its batch
        intact.
        """
        now = self._clock.now()
        person = job.person
        earlier = conn.execute(
            select(
                licenses.c.order_number,
                licenses.c.vault_token,
                licenses.c.email_key,
                licenses.c.first_name,
                licenses.c.last_name,
            ).where(
                licenses.c.partner_id == job.partner_id,
                licenses.c.transaction_id == job.transaction_id,
            )
        ).first()
        if earlier is not None:
            same = (earlier.email_key, earlier.first_name, earlier.last_name) == (
                person.email_key,
                person.first_name,
                person.last_name,
            )
            if not same:
                raise TransactionConflictError()
            return Grant(earlier.order_number, earlier.vault_token, replayed=True)

        live = conn.execute(
            select(licenses.c.id, licenses.c.order_number, licenses.c.expires_at).where(
                licenses.c.partner_id == job.partner_id,
                licenses.c.live_email_key == person.email_key,
            )
        ).first()
        if live is not None:
            if live.expires_at > now:
                raise ExistingLicenseError(live.order_number)
            conn.execute(
                update(licenses)
                .where(licenses.c.id == live.id)
                .values(status=EXPIRED, live_email_key=None)
            )

        grant = Grant(new_order_number(), new_vault_token(), replayed=False)
        key = conn.execute(
            insert(licenses).values(
                order_number=grant.order_number,
                partner_id=job.partner_id,
                transaction_id=job.transaction_id,
                email=person.email,
                email_key=person.email_key,
                live_email_key=person.email_key,
                first_name=person.first_name,
                last_name=person.last_name,
                plan=job.plan.code,
                products=json.dumps(job.plan.product_codes),
                status=INVITED,
                created_at=now,
                starts_at=now,
                expires_at=years_after(now, job.plan.term_years),
                vault_token=grant.vault_token,
            )
        ).inserted_primary_key
        assert key is not None
        conn.execute(
            insert(outbox).values(
                license_id=key[0],
                kind="invitation",
                status="pending",
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
        )
        return grant
