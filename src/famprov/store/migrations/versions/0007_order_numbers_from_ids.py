"""licenses: order numbers are permuted ids; older ones kept aside

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05

A new license's order number is its id through the store's permutation
(`famprov.licenses.numbers`), whose key this revision makes, so the unique
index of order numbers, whose random keys made every grant write a page of
it, goes. The numbers already given out stay valid: they move to
``legacy_order_numbers``, which new grants never write. On PostgreSQL the
licenses' id sequence steps by `ID_BLOCK`: each writer process takes a
block of ids with one ``nextval``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from famprov.licenses.numbers import ID_BLOCK, KEY_NAME, new_key

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    store_keys = op.create_table(
        "store_keys",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_store_keys")),
    )
    op.bulk_insert(store_keys, [{"name": KEY_NAME, "value": new_key()}])
    op.create_table(
        "legacy_order_numbers",
        sa.Column("order_number", sa.String(length=13), nullable=False),
        sa.Column("license_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["license_id"],
            ["licenses.id"],
            name=op.f("fk_legacy_order_numbers_license_id_licenses"),
        ),
        sa.PrimaryKeyConstraint("order_number", name=op.f("pk_legacy_order_numbers")),
    )
    op.execute(
        "INSERT INTO legacy_order_numbers (order_number, license_id) "
        "SELECT order_number, id FROM licenses"
    )
    with op.batch_alter_table("licenses", schema=None) as batch_op:
        batch_op.drop_constraint("uq_licenses_order_number", type_="unique")
    _id_step(ID_BLOCK)


def downgrade() -> None:
    _id_step(1)
    with op.batch_alter_table("licenses", schema=None) as batch_op:
        batch_op.create_unique_constraint(
            batch_op.f("uq_licenses_order_number"), ["order_number"]
        )
    op.drop_table("legacy_order_numbers")
    op.drop_table("store_keys")


def _id_step(step: int) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite's ids follow the highest; its one writer takes them
    op.execute(
        "DO $$ BEGIN EXECUTE format('ALTER SEQUENCE %s INCREMENT BY "
        f"{int(step)}', pg_get_serial_sequence('licenses', 'id')); END $$"
    )
