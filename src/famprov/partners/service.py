"""Partner records: added and disabled by the operator, read on every grant."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, func, insert, select, update

from famprov.clock import Clock
from famprov.errors import NotFoundError, OperatorError, PartnerAuthError
from famprov.keys import Keyring, salt_context
from famprov.logs import Secret
from famprov.partners.hashing import verify_hash
from famprov.store import WRITE
from famprov.store.schema import partners
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
    # The salt a rotation replaced, and the end of the overlap in which it
    # still verifies: checked at each request, whatever the cache holds.
    previous_salt: Secret | None = None
    previous_salt_until: datetime | None = None
    # As the operator wrote it; None follows the server's default.
    rate_limit: str | None = None

    def salts(self, now: datetime) -> tuple[str | None, str | None]:
        """The salts a request at ``now`` may be hashed with: the current
        one, and the previous one during an overlap (else None)."""
        if not self.enabled:
            return None, None
        previous = self.previous_salt
        until = self.previous_salt_until
        if previous is None or until is None or until <= now:
            return self.salt.reveal(), None
        return self.salt.reveal(), previous.reveal()


@dataclass(frozen=True, slots=True)
class PartnerSummary:
    name: str
    enabled: bool
    created_at: datetime
    licenses: int  # granted so far, revoked and expired ones included
    quota: int | None  # None: no cap
    previous_salt_until: datetime | None
    rate_limit: str | None  # None: the server's default

    @property
    def remaining(self) -> int | None:
        """Licenses the partner may still be granted; None without a quota."""
        return None if self.quota is None else max(self.quota - self.licenses, 0)


@dataclass(frozen=True, slots=True)
class RotatedSalt:
    """A rotation's outcome: the new salt, shown once."""

    salt: Secret
    # Until when the salt it replaced verifies; None when it stopped at once.
    previous_until: datetime | None
    # The end of an earlier overlap this rotation cut short, if any.
    cut_short: datetime | None


def generate_salt() -> str:
    """A fresh salt of 256 random bits, starting with a letter or digit so
    that no command line mistakes it for an option."""
    while True:
        salt = secrets.token_urlsafe(32)
        if salt[0].isalnum():
            return salt


def could_be_partner(name: str) -> bool:
    """Whether a partner can have this name: 1 to 64 characters, letters,
    digits, space, '.', '_' and '-', starting with a letter or digit."""
    return NAME_PATTERN.fullmatch(name) is not None


def check_name(name: str) -> str:
    if not could_be_partner(name):
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


MAX_QUOTA = 2**31 - 1  # what an INTEGER column holds on every store


def check_quota(quota: int | None) -> int | None:
    if quota is not None and not 0 <= quota <= MAX_QUOTA:
        raise OperatorError(f"quota must be 0 to {MAX_QUOTA:,} licenses")
    return quota


def check_rate(text: str) -> str:
    """The rate as it is stored: ``N/PERIOD`` written the one way, or
    ``unlimited``."""
    try:
        return describe(Rate.parse(text))
    except RateError as exc:
        raise OperatorError(str(exc)) from None


def add_partner(
    engine: Engine,
    keyring: Keyring,
    clock: Clock,
    name: str,
    salt: str,
    *,
    quota: int | None = None,
    rate_limit: str | None = None,
) -> Partner:
    check_name(name)
    check_salt(salt)
    check_quota(quota)
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
                sealed_salt=keyring.seal(salt, salt_context(name)),
                enabled=True,
                created_at=now,
                license_quota=quota,
                rate_limit=rate_limit,
            )
        ).inserted_primary_key
        assert row_id is not None
    return Partner(row_id[0], name, Secret(salt), True, now, rate_limit=rate_limit)


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
    partners.c.previous_salt_until,
    partners.c.rate_limit,
)


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
    with engine.connect() as conn:
        return [
            PartnerSummary(*row)
            for row in conn.execute(_SUMMARY.order_by(partners.c.name))
        ]


def count_partners(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(partners)).scalar_one()


def find_partner(engine: Engine, keyring: Keyring, name: str) -> Partner | None:
    with engine.connect() as conn:
        return _find(conn, keyring, name)


def _find(conn: Connection, keyring: Keyring, name: str) -> Partner | None:
    row = conn.execute(select(partners).where(partners.c.name == name)).first()
    if row is None:
        return None
    context = salt_context(row.name)
    previous = row.sealed_previous_salt
    return Partner(
        row.id,
        row.name,
        Secret(keyring.open(row.sealed_salt, context)),
        row.enabled,
        row.created_at,
        Secret(keyring.open(previous, context)) if previous is not None else None,
        row.previous_salt_until,
        row.rate_limit,
    )


def rotate_salt(
    engine: Engine, keyring: Keyring, clock: Clock, name: str, overlap: timedelta
) -> RotatedSalt:
    """Give a partner a new salt; the current one keeps verifying for
    ``overlap`` (not at all when it is zero).

    A rotation during another's overlap ends that overlap now: only the
    salt being replaced stays beside the new one.
    """
    if overlap < timedelta(0):
        raise OperatorError("the overlap must not be negative")
    salt = generate_salt()
    now = clock.now()
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        row = conn.execute(
            select(partners.c.sealed_salt, partners.c.previous_salt_until).where(
                partners.c.name == name
            )
        ).first()
        if row is None:
            raise NotFoundError(f"no partner named {name!r}")
        earlier = row.previous_salt_until
        until = now + overlap if overlap else None
        conn.execute(
            update(partners)
            .where(partners.c.name == name)
            .values(
                sealed_salt=keyring.seal(salt, salt_context(name)),
                # Moved as it is: sealed for this partner, it opens here too.
                sealed_previous_salt=row.sealed_salt if until else None,
                previous_salt_until=until,
            )
        )
    cut_short = earlier if earlier is not None and earlier > now else None
    return RotatedSalt(Secret(salt), until, cut_short)


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

    def __init__(self, engine: Engine, keyring: Keyring, ttl_seconds: float) -> None:
        self._engine = engine
        self._keyring = keyring
        self._ttl = ttl_seconds
        self._cache: dict[str, tuple[float, Partner | None]] = {}
        # One read of the store per name at a time: the requests that miss
        # together (a partner's burst, when its entry runs out) share it.
        self._reading: dict[str, asyncio.Future[Partner | None]] = {}

    async def get(self, name: str) -> Partner | None:
        hit = self._cache.get(name)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        if not could_be_partner(name):
            # Unknown, without asking the store, which may refuse what it
            # holds (PostgreSQL takes no NUL in a text); never cached, so a
            # hit above is a name a partner could have.
            return None
        reading = self._reading.get(name)
        if reading is None:
            reading = asyncio.ensure_future(self._read(name, now))
            self._reading[name] = reading
        # A cancelled request must not cancel the read its neighbours share.
        return await asyncio.shield(reading)

    async def _read(self, name: str, now: float) -> Partner | None:
        try:
            partner = await asyncio.to_thread(
                find_partner, self._engine, self._keyring, name
            )
        finally:
            del self._reading[name]
        self._cache.pop(name, None)
        if len(self._cache) >= CACHE_ENTRIES:
            del self._cache[next(iter(self._cache))]
        self._cache[name] = (now, partner)
        return partner


def authenticate(
    partner: Partner | None, email: str, hash_hex: str, now: datetime
) -> str:
    """Return the email the hash verifies, or raise `PartnerAuthError`.

    Clients built on the vendor's sample do not URL-encode, so a ``+`` in the
    email reaches us as a space. When the email as received fails and holds a
    space, the variant with every space read as ``+`` is tried; the email that
    verifies is the one the partner meant.

    During a salt rotation's overlap the previous salt verifies too; past
    its end (``now``), only the current one, whatever the cache holds.
    """
    salt, previous = (None, None) if partner is None else partner.salts(now)
    if verify_hash(email, salt, hash_hex, previous):
        return email
    if " " in email:
        variant = email.replace(" ", "+")
        if verify_hash(variant, salt, hash_hex, previous):
            return variant
    raise PartnerAuthError()
