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
from famprov.store.schema import partners

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


@dataclass(frozen=True, slots=True)
class PartnerSummary:
    name: str
    enabled: bool
    created_at: datetime
    licenses: int  # granted so far, revoked and expired ones included
    quota: int | None  # None: no cap

    @property
    def remaining(self) -> int | None:
        """Licenses the partner may still be granted; None without a quota."""
        return None if self.quota is None else max(self.quota - self.licenses, 0)


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


def check_quota(quota: int | None) -> int | None:
    if quota is not None and quota < 0:
        raise OperatorError("quota must be 0 or more licenses")
    return quota


def add_partner(
    engine: Engine, clock: Clock, name: str, salt: str, *, quota: int | None = None
) -> Partner:
    check_name(name)
    check_salt(salt)
    check_quota(quota)
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
                license_quota=quota,
            )
        ).inserted_primary_key
        assert row_id is not None
    return Partner(row_id[0], name, Secret(salt), True, now)


def set_enabled(engine: Engine, clock: Clock, name: str, enabled: bool) -> None:
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        result = conn.execute(
            update(partners)
            .where(partners.c.name == name)
            .values(enabled=enabled, disabled_at=None if enabled else clock.now())
        )
        if result.rowcount == 0:
            raise NotFoundError(f"no partner named {name!r}")


def set_quota(engine: Engine, name: str, quota: int | None) -> PartnerSummary:
    """Cap the partner's licenses at ``quota`` (None: no cap).

    A quota below what the partner was already granted is allowed: nothing
    is taken back, and no further grant passes. Grants in flight are held to
    the new quota: the writer checks it in the statement that counts them.
    """
    check_quota(quota)
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        conn.execute(
            update(partners).where(partners.c.name == name).values(license_quota=quota)
        )
        found = conn.execute(_SUMMARY.where(partners.c.name == name)).first()
        if found is None:
            raise NotFoundError(f"no partner named {name!r}")
    return PartnerSummary(*found)


_SUMMARY = select(
    partners.c.name,
    partners.c.enabled,
    partners.c.created_at,
    partners.c.licenses_used,
    partners.c.license_quota,
)


def list_partners(engine: Engine) -> Sequence[PartnerSummary]:
    with engine.connect() as conn:
        return [
            PartnerSummary(*row)
            for row in conn.execute(_SUMMARY.order_by(partners.c.name))
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
    return Partner(row.id, row.name, Secret(row.salt), row.enabled, row.created_at)


class PartnerDirectory:
    """Partners by name for the request path, each answer reused a short while.

    A name the store does not hold is remembered as unknown just as a known
    one is remembered, so that the time an answer takes tells a caller
    nothing about which names exist. The cache holds a bounded number of
    names; the oldest go first.
    """

    # TODO: whether a name is in the cache shows in the time of an answer (a
    # miss waits for the store). A partner's own traffic keeps its name in
    # the cache, so a prober who times its first request for each name can
    # tell a name in use in the last FAMPROV_PARTNER_CACHE_SECONDS from one
    # nobody asked for. Holding every partner in memory, refreshed in the
    # background, would answer every name alike; it costs a read of the
    # whole table per refresh.

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


# A failed authentication verifies the hash against this many salts: the
# partner's usable ones, and the dummy in place of each it lacks (all of them
# for an unknown or disabled partner). So it costs the same whichever partner
# is named; a partner with more usable salts than this (during a salt
# rotation's overlap) must not exist, or it would stand out by the extra work.
SALTS_CHECKED = 1


def authenticate(partner: Partner | None, email: str, hash_hex: str) -> str:
    """Return the email the hash verifies, or raise `PartnerAuthError`.

    Clients built on the vendor's sample do not URL-encode, so a ``+`` in the
    email reaches us as a space. When the email as received fails and holds a
    space, the variant with every space read as ``+`` is tried; the email that
    verifies is the one the partner meant.

    An unknown partner, a disabled one and a wrong hash do the same work:
    each verification runs, against the dummy salt where there is no usable
    one (`SALTS_CHECKED`), so that the time of a refusal tells nothing about
    which names exist.
    """
    salts = _usable_salts(partner)
    if _verifies(email, salts, hash_hex):
        return email
    if " " in email:
        variant = email.replace(" ", "+")
        if _verifies(variant, salts, hash_hex):
            return variant
    raise PartnerAuthError()


def _usable_salts(partner: Partner | None) -> tuple[str | None, ...]:
    """The salts a request is verified against; None is the dummy."""
    if partner is None or not partner.enabled:
        return _DUMMIES
    salts = (partner.salt.reveal(),)
    return salts + _DUMMIES[len(salts) :]


_DUMMIES: tuple[None, ...] = (None,) * SALTS_CHECKED


def _verifies(email: str, salts: tuple[str | None, ...], hash_hex: str) -> bool:
    return any(verify_hash(email, salt, hash_hex) for salt in salts)
