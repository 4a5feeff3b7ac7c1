"""partners: license_quota and licenses_used, a cap on a partner's licenses

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("partners", schema=None) as batch_op:
        batch_op.add_column(sa.Column("license_quota", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("licenses_used", sa.Integer(), nullable=False, server_default="0")
        )
    # Every license a partner was granted so far counts, as from now on.
    op.execute(
        "UPDATE partners SET licenses_used = "
        "(SELECT count(*) FROM licenses WHERE licenses.partner_id = partners.id)"
    )


def downgrade() -> None:
    # Not in batch mode: on SQLite that copies the table, and the licenses'
    # foreign keys refuse to let the old one go. SQLite drops a column in
    # place since 3.35.
    op.drop_column("partners", "licenses_used")
    op.drop_column("partners", "license_quota")
