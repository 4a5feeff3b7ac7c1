"""The store's sealed secrets as a whole: checked at start, resealed under the
newest key by `famprov keys rotate`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, bindparam, select, update

from famprov.keys import Keyring, salt_context, token_context
from famprov.store import WRITE
from famprov.store.schema import licenses, partners


@dataclass(frozen=True, slots=True)
class Resealed:
    salts: int
    tokens: int
    # Previous salts whose overlap was over, removed rather than resealed.
    expired_salts: int


def check_keyring(engine: Engine, keyring: Keyring) -> None:
    """Open the oldest and newest sealed salt and token; raise
    `famprov.keys.SecretKeyError` now rather than at the first request."""
    with engine.connect() as conn:
        for order in (partners.c.id.asc(), partners.c.id.desc()):
            salt = conn.execute(
                select(partners.c.name, partners.c.sealed_salt).order_by(order).limit(1)
            ).first()
            if salt is not None:
                keyring.open(salt.sealed_salt, salt_context(salt.name))
        for order in (licenses.c.id.asc(), licenses.c.id.desc()):
            token = conn.execute(
                select(licenses.c.order_number, licenses.c.sealed_vault_token)
                .order_by(order)
                .limit(1)
            ).first()
            if token is not None:
                keyring.open(
                    token.sealed_vault_token, token_context(token.order_number)
                )


def reseal(
    engine: Engine,
    keyring: Keyring,
    now: datetime,
    *,
    batch_size: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> Resealed:
    """Seal every salt and vault token not under the newest key with it.

    Licenses go a batch at a time, each batch in a transaction of its own,
    so that a serving writer waits on none for long. Safe to run again,
    and beside a running service: a value already under the newest key is
    left as it is, and each update names the value it replaces.
    """
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        salts, expired = _reseal_partners(conn, keyring, now)
    tokens = 0
    last = 0
    while True:
        with engine.connect().execution_options(**WRITE) as conn, conn.begin():
            rows = conn.execute(
                select(
                    licenses.c.id,
                    licenses.c.order_number,
                    licenses.c.sealed_vault_token,
                )
                .where(licenses.c.id > last)
                .order_by(licenses.c.id)
                .limit(batch_size)
            ).all()
            if not rows:
                break
            last = rows[-1].id
            changes = [
                {
                    "row_id": row.id,
                    "old": row.sealed_vault_token,
                    "new": _resealed(
                        keyring, row.sealed_vault_token, token_context(row.order_number)
                    ),
                }
                for row in rows
                if not keyring.is_newest(row.sealed_vault_token)
            ]
            if changes:
                conn.execute(
                    update(licenses)
                    .where(
                        licenses.c.id == bindparam("row_id"),
                        licenses.c.sealed_vault_token == bindparam("old"),
                    )
                    .values(sealed_vault_token=bindparam("new")),
                    changes,
                )
        tokens += len(changes)
        if progress is not None:
            progress(tokens)
    return Resealed(salts, tokens, expired)


def _reseal_partners(
    conn: Connection, keyring: Keyring, now: datetime
) -> tuple[int, int]:
    resealed = expired = 0
    for row in conn.execute(select(partners)).all():
        context = salt_context(row.name)
        values: dict[str, object] = {}
        if not keyring.is_newest(row.sealed_salt):
            values["sealed_salt"] = _resealed(keyring, row.sealed_salt, context)
            resealed += 1
        previous, until = row.sealed_previous_salt, row.previous_salt_until
        if previous is not None and (until is None or until <= now):
            values["sealed_previous_salt"] = values["previous_salt_until"] = None
            expired += 1
        elif previous is not None and not keyring.is_newest(previous):
            values["sealed_previous_salt"] = _resealed(keyring, previous, context)
            resealed += 1
        if values:
            conn.execute(
                update(partners).where(partners.c.id == row.id).values(**values)
            )
    return resealed, expired


def _resealed(keyring: Keyring, sealed: str, context: str) -> str:
    return keyring.seal(keyring.open(sealed, context), context)
