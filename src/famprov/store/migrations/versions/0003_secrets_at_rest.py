"""secrets at rest: salts and vault tokens sealed with the operator's key

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05

The salts and vault tokens already stored are sealed here, in the same
transaction as the change of columns, with the keyring famprov hands the
migration (`famprov.store.migrate.upgrade`); a store that holds none needs
no key. Vault URLs already sent keep working: each token keeps its value,
stored now as a digest to find it by and sealed to answer replays with.
"""

from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from famprov.keys import (
    Keyring,
    SecretKeyError,
    salt_context,
    token_context,
    token_digest,
)

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 1000

partners = sa.table(
    "partners",
    sa.column("id", sa.Integer),
    sa.column("name", sa.String),
    sa.column("salt", sa.String),
    sa.column("sealed_salt", sa.Text),
)
licenses = sa.table(
    "licenses",
    sa.column("id", sa.Integer),
    sa.column("order_number", sa.String),
    sa.column("vault_token", sa.String),
    sa.column("vault_token_digest", sa.String),
    sa.column("sealed_vault_token", sa.Text),
)


def upgrade() -> None:
    with op.batch_alter_table("partners", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sealed_salt", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("sealed_previous_salt", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column("previous_salt_until", sa.DateTime(), nullable=True)
        )
    with op.batch_alter_table("licenses", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("vault_token_digest", sa.String(length=43), nullable=True)
        )
        batch_op.add_column(sa.Column("sealed_vault_token", sa.Text(), nullable=True))

    for rows in _batches(partners, partners.c.name, partners.c.salt):
        keyring = _keyring()
        op.get_bind().execute(
            partners.update()
            .where(partners.c.id == sa.bindparam("row_id"))
            .values(sealed_salt=sa.bindparam("sealed")),
            [
                {"row_id": row_id, "sealed": keyring.seal(salt, salt_context(name))}
                for row_id, name, salt in rows
            ],
        )
    for rows in _batches(licenses, licenses.c.order_number, licenses.c.vault_token):
        keyring = _keyring()
        op.get_bind().execute(
            licenses.update()
            .where(licenses.c.id == sa.bindparam("row_id"))
            .values(
                vault_token_digest=sa.bindparam("digest"),
                sealed_vault_token=sa.bindparam("sealed"),
            ),
            [
                {
                    "row_id": row_id,
                    "digest": token_digest(token),
                    "sealed": keyring.seal(token, token_context(order)),
                }
                for row_id, order, token in rows
            ],
        )

    with op.batch_alter_table("partners", schema=None) as batch_op:
        batch_op.alter_column("sealed_salt", existing_type=sa.Text(), nullable=False)
        batch_op.drop_column("salt")
    with op.batch_alter_table("licenses", schema=None) as batch_op:
        batch_op.alter_column(
            "vault_token_digest", existing_type=sa.String(length=43), nullable=False
        )
        batch_op.alter_column(
            "sealed_vault_token", existing_type=sa.Text(), nullable=False
        )
        batch_op.drop_constraint("uq_licenses_vault_token", type_="unique")
        batch_op.drop_column("vault_token")
        batch_op.create_unique_constraint(
            batch_op.f("uq_licenses_vault_token_digest"), ["vault_token_digest"]
        )


def downgrade() -> None:
    with op.batch_alter_table("partners", schema=None) as batch_op:
        batch_op.add_column(sa.Column("salt", sa.String(length=256), nullable=True))
    with op.batch_alter_table("licenses", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("vault_token", sa.String(length=64), nullable=True)
        )

    for rows in _batches(partners, partners.c.name, partners.c.sealed_salt):
        keyring = _keyring()
        op.get_bind().execute(
            partners.update()
            .where(partners.c.id == sa.bindparam("row_id"))
            .values(salt=sa.bindparam("plain")),
            [
                {"row_id": row_id, "plain": keyring.open(sealed, salt_context(name))}
                for row_id, name, sealed in rows
            ],
        )
    for rows in _batches(
        licenses, licenses.c.order_number, licenses.c.sealed_vault_token
    ):
        keyring = _keyring()
        op.get_bind().execute(
            licenses.update()
            .where(licenses.c.id == sa.bindparam("row_id"))
            .values(vault_token=sa.bindparam("plain")),
            [
                {"row_id": row_id, "plain": keyring.open(sealed, token_context(order))}
                for row_id, order, sealed in rows
            ],
        )

    with op.batch_alter_table("licenses", schema=None) as batch_op:
        batch_op.drop_constraint("uq_licenses_vault_token_digest", type_="unique")
        batch_op.drop_column("sealed_vault_token")
        batch_op.drop_column("vault_token_digest")
        batch_op.alter_column(
            "vault_token", existing_type=sa.String(length=64), nullable=False
        )
        batch_op.create_unique_constraint(
            batch_op.f("uq_licenses_vault_token"), ["vault_token"]
        )
    with op.batch_alter_table("partners", schema=None) as batch_op:
        batch_op.drop_column("previous_salt_until")
        batch_op.drop_column("sealed_previous_salt")
        batch_op.drop_column("sealed_salt")
        batch_op.alter_column(
            "salt", existing_type=sa.String(length=256), nullable=False
        )


def _batches(table: Any, *columns: Any) -> Iterator[list[Any]]:
    """The rows' ids and ``columns``, a batch at a time, in id order."""
    last = 0
    while True:
        rows = list(
            op.get_bind().execute(
                sa.select(table.c.id, *columns)
                .where(table.c.id > last)
                .order_by(table.c.id)
                .limit(BATCH)
            )
        )
        if not rows:
            return
        yield [tuple(row) for row in rows]
        last = rows[-1][0]


def _keyring() -> Keyring:
    config = op.get_context().config
    keyring = config.attributes.get("keyring") if config is not None else None
    if keyring is None:
        raise SecretKeyError(
            "this migration seals the salts and vault tokens the store holds, "
            "and was given no key: run it with `famprov db upgrade`"
        )
    assert isinstance(keyring, Keyring)
    return keyring
