"""Partner records: added and disabled by the operator, read on every grant."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, func, insert, select, update

from famprov.clock import Clock
from famprov.errors import NotFoundError, OperatorError, PartnerAuthError
from famprov.logs import Secret
from famprov.partners.hashing import verify_hash
from famprov.store import WRITE
from famprov.store.schema import licenses, partners
from famprov.throttle.rates import Rate, RateError, describe

# Only characters that a client concatenating an unencoded URL can send.
NAME_PATTERN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9 ._-]{0,62}[A-Za-z0-9._-])?")
CACHE_ENTRIES = 10_000
MIN_SALT_LENGTH = 16
MAX_SALT_LENGTH = 256


@dataclass(frozen=True, slots=True)
class Partner:
    id: int
    name: str
    salt: Secret
    enabled: bool
    created_at: datetime
    # As the operator wrote it; None follows the server's default.
    rate_limit: str | None = None


@dataclass(frozen=True, slots=True)
class PartnerSummary:
    name: str
    enabled: bool
    created_at: datetime
    licenses: int
    rate_limit: str | None = None


def generate_salt() -> str:
    """A fresh salt of 256 random bits, starting with a letter or digit so
    that no command line mistakes it for an option."""
    while True:
        salt = secrets.token_urlsafe(32)
        if salt[0].isalnum():
            return salt


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise OperatorError(
            "partner name must be 1 to 64 characters: letters, digits, space, "
            "'.', '_' and '-', starting with a letter or digit"
        )
    return name


def check_salt(salt: str) -> str:
    """Refuse a salt that partners would struggle to reproduce, or to keep."""
    if salt != salt.strip():
        raise OperatorError("salt must not start or end with white space")
    if not MIN_SALT_LENGTH <= len(salt) <= MAX_SALT_LENGTH:
        raise OperatorError(
            f"salt must be {MIN_SALT_LENGTH} to {MAX_SALT_LENGTH} characters long"
        )
    if not salt.isprintable():
        raise OperatorError("salt must not contain control characters")
    return salt


def check_rate(text: str) -> str:
    """The rate as it is stored: ``N/PERIOD`` written the one way, or
    ``unlimited``."""
    try:
        return describe(Rate.parse(text))
    except RateError as exc:
        raise OperatorError(str(exc)) from None


def add_partner(
    engine: Engine,
    clock: Clock,
    name: str,
    salt: str,
    *,
    rate_limit: str | None = None,
) -> Partner:
    check_name(name)
    check_salt(salt)
    if rate_limit is not None:
        rate_limit = check_rate(rate_limit)
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        taken = conn.execute(
            select(partners.c.name).where(func.lower(partners.c.name) == name.lower())
        ).scalar()
        if taken is not None:
            # Names are exact on the wire; two that differ by case only
            # would be told apart by nobody but the hash.
            raise OperatorError(f"partner {taken!r} already exists")
        now = clock.now()
        row_id = conn.execute(
            insert(partners).values(
                name=name,
                salt=salt,
                enabled=True,
                created_at=now,
                rate_limit=rate_limit,
            )
        ).inserted_primary_key
        assert row_id is not None
    return Partner(row_id[0], name, Secret(salt), True, now, rate_limit)


def set_enabled(engine: Engine, clock: Clock, name: str, enabled: bool) -> None:
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        result = conn.execute(
            update(partners)
            .where(partners.c.name == name)
            .values(enabled=enabled, disabled_at=None if enabled else clock.now())
        )
        if result.rowcount == 0:
            raise NotFoundError(f"no partner named {name!r}")


def set_rate_limit(engine: Engine, name: str, rate_limit: str | None) -> str | None:
    """Give a partner its own request rate, None for the server's default;
    return it as stored."""
    if rate_limit is not None:
        rate_limit = check_rate(rate_limit)
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        result = conn.execute(
            update(partners)
            .where(partners.c.name == name)
            .values(rate_limit=rate_limit)
        )
        if result.rowcount == 0:
            raise NotFoundError(f"no partner named {name!r}")
    return rate_limit


def list_partners(engine: Engine) -> Sequence[PartnerSummary]:
    counts = (
        select(licenses.c.partner_id, func.count().label("n"))
        .group_by(licenses.c.partner_id)
        .subquery()
    )
    query = (
        select(partners, func.coalesce(counts.c.n, 0).label("n"))
        .outerjoin(counts, counts.c.partner_id == partners.c.id)
        .order_by(partners.c.name)
    )
    with engine.connect() as conn:
        return [
            PartnerSummary(row.name, row.enabled, row.created_at, row.n, row.rate_limit)
            for row in conn.execute(query)
        ]


def count_partners(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(partners)).scalar_one()


def find_partner(engine: Engine, name: str) -> Partner | None:
    with engine.connect() as conn:
        return _find(conn, name)


def _find(conn: Connection, name: str) -> Partner | None:
    row = conn.execute(select(partners).where(partners.c.name == name)).first()
    if row is None:
        return None
    return Partner(
        row.id,
        row.name,
        Secret(row.salt),
        row.enabled,
        row.created_at,
        row.rate_limit,
    )


class PartnerDirectory:
    """Partners by name for the request path, each answer reused a short while.

    A name the store does not hold is remembered as unknown just as a known
    one is remembered, so that the time an answer takes tells a caller
    nothing about which names exist. The cache holds a bounded number of
    names; the oldest go first.
    """

    def __init__(self, engine: Engine, ttl_seconds: float) -> None:
        self._engine = engine
        self._ttl = ttl_seconds
        self._cache: dict[str, tuple[float, Partner | None]] = {}
        # One read of the store per name at a time: the requests that miss
        # together (a partner's burst, when its entry runs out) share it.
        self._reading: dict[str, asyncio.Future[Partner | None]] = {}

    async def get(self, name: str) -> Partner | None:
        if len(name) > 64:
            return None
        hit = self._cache.get(name)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        reading = self._reading.get(name)
        if reading is None:
            reading = asyncio.ensure_future(self._read(name, now))
            self._reading[name] = reading
        # A cancelled request must not cancel the read its neighbours share.
        return await asyncio.shield(reading)

    async def _read(self, name: str, now: float) -> Partner | None:
        try:
            partner = await asyncio.to_thread(find_partner, self._engine, name)
        finally:
            del self._reading[name]
        self._cache.pop(name, None)
        if len(self._cache) >= CACHE_ENTRIES:
            del self._cache[next(iter(self._cache))]
        self._cache[name] = (now, partner)
        return partner


def authenticate(partner: Partner | None, email: str, hash_hex: str) -> str:
    """Return the email the hash verifies, or raise `PartnerAuthError`.

    Clients built on the vendor's sample do not URL-encode, so a ``+`` in the
    email reaches us as a space. When the email as received fails and holds a
    space, the variant with every space read as ``+`` is tried; the email that
    verifies is the one the partner meant.
    """
    usable = partner is not None and partner.enabled
    salt = partner.salt.reveal() if usable and partner is not None else None
    if verify_hash(email, salt, hash_hex):
        return email
    if " " in email:
        variant = email.replace(" ", "+")
        if verify_hash(variant, salt, hash_hex):
            return variant
    raise PartnerAuthError()
