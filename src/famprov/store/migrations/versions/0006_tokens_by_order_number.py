"""licenses: vault tokens found by their order number; older ones by digest

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05

A vault token now begins with its license's order number, so the unique
index of token digests, whose random keys made every grant write a page of
it, goes. The tokens already sent keep working: their digests move to
``legacy_vault_tokens``, which new grants never write.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "legacy_vault_tokens",
        sa.Column("vault_token_digest", sa.String(length=43), nullable=False),
        sa.Column("license_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["license_id"],
            ["licenses.id"],
            name=op.f("fk_legacy_vault_tokens_license_id_licenses"),
        ),
        sa.PrimaryKeyConstraint(
            "vault_token_digest", name=op.f("pk_legacy_vault_tokens")
        ),
    )
    op.execute(
        "INSERT INTO legacy_vault_tokens (vault_token_digest, license_id) "
        "SELECT vault_token_digest, id FROM licenses"
    )
    with op.batch_alter_table("licenses", schema=None) as batch_op:
        batch_op.drop_constraint("uq_licenses_vault_token_digest", type_="unique")


def downgrade() -> None:
    with op.batch_alter_table("licenses", schema=None) as batch_op:
        batch_op.create_unique_constraint(
            batch_op.f("uq_licenses_vault_token_digest"), ["vault_token_digest"]
        )
    op.drop_table("legacy_vault_tokens")
