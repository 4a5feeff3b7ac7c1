"""Alembic's entry point: famprov hands it a live connection, never a URL."""

from __future__ import annotations

from alembic import context

from famprov.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite changes most of a table by copying it; batch mode does that.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
