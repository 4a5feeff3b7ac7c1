"""The tables of the store, one SQLAlchemy metadata for SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime, stored naive in UTC on every backend."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ValueError("famprov stores aware datetimes only")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


partners = Table(
    "partners",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    # The salt, sealed with the operator's key (`famprov.keys`): a copy of
    # the database alone lets nobody compute a valid hash.
    Column("sealed_salt", Text, nullable=False),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("disabled_at", UTCDateTime),
    # The salt a rotation replaced, sealed too, and until when it verifies
    # beside the current one; both NULL outside an overlap.
    Column("sealed_previous_salt", Text),
    Column("previous_salt_until", UTCDateTime),
    # The most licenses the partner may be granted, NULL for no cap; and how
    # many it was granted (revoked and expired ones included), counted by
    # the writer in the transaction that inserts them.
    Column("license_quota", Integer),
    Column("licenses_used", Integer, nullable=False, default=0, server_default="0"),
    # The partner's request rate as the operator wrote it ("600/min",
    # "unlimited"); NULL follows the server's default (FAMPROV_PARTNER_RATE).
    Column("rate_limit", String(32)),
)

licenses = Table(
    "licenses",
    metadata,
    Column("id", Integer, primary_key=True),
    # The id through the store's permutation (`famprov.licenses.numbers`):
    # unique because ids are, and found through the id, so no index.
    Column("order_number", String(13), nullable=False),
    Column("partner_id", ForeignKey("partners.id"), nullable=False),
    Column("transaction_id", String(128), nullable=False),
    Column("email", String(320), nullable=False),
    # The case-folded email; compares one person's grants from one partner.
    Column("email_key", String(320), nullable=False),
    # email_key while the license is in force, NULL once it is revoked or
    # expired: a unique index then holds "one live license per person and
    # partner" in the database itself, across processes and hosts.
    Column("live_email_key", String(320)),
    Column("first_name", String(100), nullable=False),
    Column("last_name", String(100)),
    Column("plan", String(32), nullable=False),
    Column("products", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("starts_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("accepted_at", UTCDateTime),
    Column("revoked_at", UTCDateTime),
    # The vault token is never stored as it is: the invitation page finds
    # its license by the order number the token begins with and compares the
    # token's digest, and a replay of the grant and the invitation mail read
    # it sealed with the operator's key, so a copy of the database alone
    # yields no working vault URL. No index: the order number leads to the id.
    Column("vault_token_digest", String(43), nullable=False),
    Column("sealed_vault_token", Text, nullable=False),
    UniqueConstraint("partner_id", "transaction_id", name="uq_licenses_partner_txn"),
    UniqueConstraint("partner_id", "live_email_key", name="uq_licenses_partner_live"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("license_id", ForeignKey("licenses.id"), nullable=False),
    Column("kind", String(32), nullable=False),
    # pending -> sent; pending -> failed on a permanent refusal or once the
    # retry window is over; pending -> cancelled for a revoked license.
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    # A worker that claims a row holds it until this time; past it, the row
    # is free again, so a worker that died mid-delivery loses nothing.
    Column("locked_until", UTCDateTime),
    Column("claim", String(32)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("sent_at", UTCDateTime),
    Column("last_error", Text),
    # When the first of an unbroken run of failures happened: the retry
    # window is counted from here. NULL while nothing has failed.
    Column("failing_since", UTCDateTime),
    Index("ix_outbox_due", "status", "next_attempt_at"),
    Index("ix_outbox_claim", "claim"),
    Index("ix_outbox_license", "license_id"),
)

# Vault tokens from before tokens began with their order number (revision
# 0006): 43 characters, found by their digest alone. New grants add nothing
# here, so that a grant writes one random-keyed index entry fewer.
legacy_vault_tokens = Table(
    "legacy_vault_tokens",
    metadata,
    Column("vault_token_digest", String(43), primary_key=True),
    Column("license_id", ForeignKey("licenses.id"), nullable=False),
)

# Order numbers from before they were permuted ids (revision 0007): drawn at
# random, found here. New grants add nothing, and skip the ids whose number
# one of these holds.
legacy_order_numbers = Table(
    "legacy_order_numbers",
    metadata,
    Column("order_number", String(13), primary_key=True),
    Column("license_id", ForeignKey("licenses.id"), nullable=False),
)

# Keys the store makes for itself and keeps: the permutation of order
# numbers (`famprov.licenses.numbers`), which hides nothing the store does
# not show to whoever reads it.
store_keys = Table(
    "store_keys",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)
