"""What the writer process runs: a batch of grants, decided and written.

Steps 4 and 5 of a grant (`famprov.licenses.service`) run here, in the
batching writer's transaction (`record`, in the writer process: see
`famprov.store.writer`), where the license row and its invitation's outbox
row are written together: if one is on disk, so is the other, and no caller
hears 200 before the commit. Jobs and outcomes cross to and from that
process as the plain tuples of `encode_job` and `encode_outcome`.

Vault tokens are stored as a digest and sealed (`famprov.keys`): the writer
seals each new token and opens a replay's, a couple of microseconds each,
with the keyring it is handed over its socket at start.

The quota counts every license a partner was granted, revoked and expired
ones included: `partners.licenses_used`, raised in the transaction that
inserts the licenses, by a statement that also checks the cap (see
`_count_licenses`).

The writer process imports this module and what it imports, and no more:
nothing here loads SQLAlchemy (about 28 MB of the process's memory); the
batch runs on the driver's connection (`famprov.store.raw`).
"""

from __future__ import annotations

import base64
import json
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from famprov.errors import (
    ExistingLicenseError,
    FamprovError,
    QuotaExceededError,
    TransactionConflictError,
)
from famprov.keys import Keyring, token_context, token_digest
from famprov.licenses import fields
from famprov.licenses.numbers import Numbering
from famprov.licenses.plans import CATALOGUE, Plan
from famprov.licenses.terms import INVITED, years_after
from famprov.store.raw import RawSQL, json_list
from famprov.store.writer import StaleReadError


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


def new_identities(
    reserved: Sequence[tuple[int, str]],
) -> Iterator[tuple[int, str, str]]:
    """(license id, order number, vault token) for each reserved id and its
    order number (`famprov.licenses.numbers.Numbering`), from one read of the
    OS's randomness for the lot.

    A vault token is the order number's twelve digits followed by 256
    random bits, URL-safe: the invitation page finds the license by the
    number and checks the rest (`famprov.licenses.acceptance`), so the store
    needs no index of tokens, whose random keys would cost every grant a
    page write.
    """
    pool = os.urandom(len(reserved) * 32)
    for start, (license_id, number) in zip(
        range(0, len(pool), 32), reserved, strict=True
    ):
        secret = base64.urlsafe_b64encode(pool[start : start + 32])
        token = number.replace("-", "") + secret.rstrip(b"=").decode()
        yield license_id, number, token


def record(
    sql: RawSQL,
    jobs: Sequence[GrantJob],
    now: datetime,
    keyring: Keyring,
    numbering: Numbering,
) -> list[Grant | FamprovError]:
    """Write the batch's licenses and their invitations; answer replays.

    Runs in the writer's transaction, and answers the jobs in order as if
    each had come alone: a replay or a conflict with a grant earlier in the
    same batch is seen as one, and a partner's quota runs out at the same
    job as it would one grant at a time. A refused job writes nothing.
    """
    terms = _Terms(sql, now)
    # An id for each job, in case each is a new grant: on PostgreSQL those of
    # replays and refusals are skipped.
    identities = new_identities(numbering.reserve(sql, len(jobs)))
    known = _Known.read(sql, jobs, identities, keyring)
    outcomes: list[Grant | FamprovError] = []
    created: list[tuple[GrantJob, Grant, int]] = []
    expired: list[int] = []
    for job in jobs:
        outcomes.append(known.decide(job, terms, expired, created))

    if expired:
        sql.execute_many(
            "UPDATE licenses SET status = 'expired', live_email_key = NULL "
            "WHERE id = ?",
            [(license_id,) for license_id in expired],
        )
    if created:
        _insert(sql, created, terms, keyring)
        _count_licenses(sql, Counter(job.partner_id for job, _, _ in created))
    return outcomes


def _count_licenses(sql: RawSQL, granted: Counter[int]) -> None:
    """Add the batch's new licenses to each partner's count, within its quota.

    The batch was decided on the count as read at its start. Another writer
    (a second writer process, another host) may have granted since, or the
    operator lowered the quota: then the cap no longer holds the batch, the
    statement changes nothing, and the batch is written again from a fresh
    read (`StaleReadError`). The statement runs last, so the partner's row
    stays locked only while the batch commits; partners go in the order of
    their ids, so that two batches never wait for each other's rows.
    """
    for partner_id, count in sorted(granted.items()):
        counted = sql.execute(
            "UPDATE partners SET licenses_used = licenses_used + ? WHERE id = ? "
            "AND (license_quota IS NULL OR licenses_used + ? <= license_quota)",
            (count, partner_id, count),
        ).rowcount
        if counted != 1:
            raise StaleReadError("a partner's license count changed")


# What crosses between the serving process and its writer process: plain
# tuples, cheaper to send than the objects they stand for.


def encode_job(job: GrantJob) -> tuple[Any, ...]:
    person = job.person
    return (
        job.partner_id,
        job.transaction_id,
        person.email,
        person.email_key,
        person.needs_smtputf8,
        person.first_name,
        person.last_name,
        job.plan.code,
    )


def decode_job(values: tuple[Any, ...]) -> GrantJob:
    partner_id, txid, email, key, smtputf8, first, last, plan = values
    person = fields.Person(email, key, smtputf8, first, last)
    return GrantJob(partner_id, txid, person, CATALOGUE[plan])


def batch_recorder(
    keyring: Keyring,
) -> Callable[[RawSQL, Sequence[tuple[Any, ...]], datetime], list[Any]]:
    """`record`, for the writer process: jobs and outcomes as plain values."""
    loaded: list[Numbering] = []

    def record_batch(
        sql: RawSQL, jobs: Sequence[tuple[Any, ...]], now: datetime
    ) -> list[tuple[Any, ...]]:
        if not loaded:
            loaded.append(Numbering.load(sql))  # the store's, for good
        decoded = [decode_job(job) for job in jobs]
        outcomes = record(sql, decoded, now, keyring, loaded[0])
        return [encode_outcome(outcome) for outcome in outcomes]

    return record_batch


def encode_outcome(outcome: Grant | FamprovError) -> tuple[Any, ...]:
    if isinstance(outcome, Grant):
        return ("grant", outcome.order_number, outcome.vault_token, outcome.replayed)
    if isinstance(outcome, ExistingLicenseError):
        return ("existing", outcome.order_number)
    if isinstance(outcome, TransactionConflictError):
        return ("conflict",)
    if isinstance(outcome, QuotaExceededError):
        return ("quota",)
    raise TypeError(f"no wire form for {type(outcome).__name__}")


def decode_outcome(values: tuple[Any, ...]) -> Grant:
    """The grant an outcome stands for, or raise the refusal it stands for."""
    kind = values[0]
    if kind == "grant":
        return Grant(values[1], values[2], replayed=values[3])
    if kind == "existing":
        raise ExistingLicenseError(values[1])
    if kind == "conflict":
        raise TransactionConflictError()
    if kind == "quota":
        raise QuotaExceededError()
    raise ValueError(f"unknown outcome {kind!r}")


class _Terms:
    """The times of one batch, each worked out once per plan."""

    def __init__(self, sql: RawSQL, now: datetime) -> None:
        self.now = now
        self.stored_now = sql.time(now)
        self._sql = sql
        self._by_plan: dict[str, tuple[datetime, Any, str]] = {}

    def of(self, plan: Plan) -> tuple[datetime, Any, str]:
        """The plan's expiry, as a time and as stored, and its products."""
        found = self._by_plan.get(plan.code)
        if found is None:
            ends = years_after(self.now, plan.term_years)
            products = json.dumps(plan.product_codes)
            found = self._by_plan[plan.code] = (ends, self._sql.time(ends), products)
        return found


@dataclass(slots=True)
class _Earlier:
    order_number: str
    vault_token: str
    details: tuple[str, str, str | None]


@dataclass(slots=True)
class _Holder:
    license_id: int | None
    order_number: str
    expires_at: datetime


@dataclass(slots=True)
class _Known:
    """What the store holds for a batch's keys, kept up to date as the
    batch's own grants are decided."""

    earlier: dict[tuple[int, str], _Earlier]
    holders: dict[tuple[int, str], _Holder]
    # Licenses each partner may still be granted; None for no quota.
    room: dict[int, int | None]
    identities: Iterator[tuple[int, str, str]]

    @classmethod
    def read(
        cls,
        sql: RawSQL,
        jobs: Sequence[GrantJob],
        identities: Iterator[tuple[int, str, str]],
        keyring: Keyring,
    ) -> _Known:
        known = cls({}, {}, {}, identities)
        by_partner: dict[int, list[GrantJob]] = defaultdict(list)
        for job in jobs:
            by_partner[job.partner_id].append(job)
        for partner_id, group in by_partner.items():
            txids = {job.transaction_id for job in group}
            keys = {job.person.email_key for job in group}
            by_txid, by_key = sql.any_of(sorted(txids)), sql.any_of(sorted(keys))
            # One statement, so one snapshot: read in two, a license that
            # another process commits in between could be missed by its
            # transaction id yet seen as the person's live license, and a
            # replay would be refused as a second grant. Each half keeps to
            # its own unique index. The partner's quota and count come along,
            # in a row of their own with its license columns empty (first,
            # so that PostgreSQL takes the columns' types from the licenses).
            columns = (
                "id, transaction_id, live_email_key, order_number, sealed_vault_token, "
                "email_key, first_name, last_name, expires_at"
            )
            for row in sql.execute(
                f"SELECT {_NO_LICENSE}, license_quota, licenses_used FROM partners "  # noqa: S608 - the tests hold placeholders only
                "WHERE id = ? UNION ALL "
                f"SELECT {columns}, NULL, NULL FROM licenses WHERE partner_id = ? "
                f"AND transaction_id {by_txid.test} UNION ALL "
                f"SELECT {columns}, NULL, NULL FROM licenses WHERE partner_id = ? "
                f"AND live_email_key {by_key.test}",
                (partner_id, partner_id, *by_txid.params, partner_id, *by_key.params),
            ):
                license_id, txid, live_key, order, sealed, key, first, last = row[:8]
                if license_id is None:
                    quota, used = row[9:]
                    known.room[partner_id] = None if quota is None else quota - used
                    continue
                if txid in txids:
                    # A replay answers with the same vault URL: its token,
                    # opened (a conflict's too; they are rare).
                    token = keyring.open(sealed, token_context(order))
                    known.earlier[(partner_id, txid)] = _Earlier(
                        order, token, (key, first, last)
                    )
                if live_key is not None and live_key in keys:
                    known.holders[(partner_id, live_key)] = _Holder(
                        license_id, order, sql.read_time(row[8])
                    )
        return known

    def decide(
        self,
        job: GrantJob,
        terms: _Terms,
        expired: list[int],
        created: list[tuple[GrantJob, Grant, int]],
    ) -> Grant | FamprovError:
        """The job's outcome; a new grant joins ``created`` with its id, a
        license it replaces (expired, not yet marked so) ``expired``."""
        person = job.person
        details = (person.email_key, person.first_name, person.last_name)
        earlier = self.earlier.get((job.partner_id, job.transaction_id))
        if earlier is not None:
            if earlier.details != details:
                return TransactionConflictError()
            return Grant(earlier.order_number, earlier.vault_token, replayed=True)

        holder_key = (job.partner_id, person.email_key)
        holder = self.holders.get(holder_key)
        if holder is not None and holder.expires_at > terms.now:
            return ExistingLicenseError(holder.order_number)

        room = self.room.get(job.partner_id)
        if room is not None:
            if room <= 0:
                return QuotaExceededError()
            self.room[job.partner_id] = room - 1

        if holder is not None:
            assert holder.license_id is not None  # one of ours has not expired
            expired.append(holder.license_id)

        license_id, order_number, vault_token = next(self.identities)
        grant = Grant(order_number, vault_token, replayed=False)
        created.append((job, grant, license_id))
        self.earlier[(job.partner_id, job.transaction_id)] = _Earlier(
            grant.order_number, grant.vault_token, details
        )
        self.holders[holder_key] = _Holder(
            None, grant.order_number, terms.of(job.plan)[0]
        )
        return grant


# The license columns of the read, empty on the partner's row.
_NO_LICENSE = ", ".join(["NULL"] * 9)

_LICENSE_COLUMNS = (
    "id, order_number, partner_id, transaction_id, email, email_key, live_email_key, "
    "first_name, last_name, plan, products, status, created_at, starts_at, "
    "expires_at, vault_token_digest, sealed_vault_token"
)
# The PostgreSQL type of each of those columns, read from a batch's JSON.
_LICENSE_TYPES = [
    "int",
    "text",
    "int",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "timestamp",
    "timestamp",
    "timestamp",
    "text",
    "text",
]
_OUTBOX_COLUMNS = "license_id, kind, status, attempts, next_attempt_at, created_at"


def _insert(
    sql: RawSQL,
    created: list[tuple[GrantJob, Grant, int]],
    terms: _Terms,
    keyring: Keyring,
) -> None:
    """Write each new license and, in the same transaction, its invitation.

    A statement or two for the whole batch, whose per-row work is done in
    C, by the driver or by the database, not by the interpreter.
    """
    at = terms.stored_now
    rows = []
    for job, grant, license_id in created:
        _, ends, products = terms.of(job.plan)
        person = job.person
        rows.append(
            (
                license_id,
                grant.order_number,
                job.partner_id,
                job.transaction_id,
                person.email,
                person.email_key,
                person.email_key,
                person.first_name,
                person.last_name,
                job.plan.code,
                products,
                INVITED,
                at,
                at,
                ends,
                token_digest(grant.vault_token),
                keyring.seal(grant.vault_token, token_context(grant.order_number)),
            )
        )
    if sql.is_sqlite:
        # One statement run for each row by the driver, in C: measured at
        # about 45 µs a grant for the whole batch against 63 through
        # json_each, whose ``value ->> i`` parses the row's JSON again for
        # each of the 16 columns.
        sql.execute_many(_SQLITE_INSERT, rows)
        sql.execute(
            f"INSERT INTO outbox ({_OUTBOX_COLUMNS}) "  # noqa: S608 - placeholders only
            "SELECT value, 'invitation', 'pending', 0, ?, ? FROM json_each(?)",
            (at, at, json_list([row[0] for row in rows])),
        )
        return
    # PostgreSQL: the outbox rows from the licenses the same statement
    # inserted. The rows cross as one JSON text too: the driver's adaptation
    # of one array per column cost the writer more than the statement, and
    # executemany more CPU. As jsonb, parsed once: read as json, each
    # ``row ->> i`` parsed the row again (0.77 ms against 0.06 for the rows
    # of a batch of 30).
    sql.execute(
        f"WITH new AS (INSERT INTO licenses ({_LICENSE_COLUMNS}) "  # noqa: S608 - placeholders only
        f"SELECT {_POSTGRES_ROW} FROM jsonb_array_elements(?::jsonb) "
        "WITH ORDINALITY AS batch(row, n) ORDER BY n RETURNING id) "
        f"INSERT INTO outbox ({_OUTBOX_COLUMNS}) "
        "SELECT id, 'invitation', 'pending', 0, ?, ? FROM new",
        (json_list(rows), at, at),
    )


_SQLITE_INSERT = (
    f"INSERT INTO licenses ({_LICENSE_COLUMNS}) "  # noqa: S608 - placeholders only
    f"VALUES ({', '.join('?' * len(_LICENSE_TYPES))})"
)
_POSTGRES_ROW = ", ".join(
    f"(row ->> {i})::{kind}" for i, kind in enumerate(_LICENSE_TYPES)
)
