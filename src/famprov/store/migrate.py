"""Schema migrations, owned by Alembic and run through famprov's own engine.

The embedded SQLite store upgrades itself on first use. A PostgreSQL store is
shared by many hosts, so famprov never changes it on its own: the operator
runs ``famprov db upgrade``, and a server or command that finds the database
behind its migrations refuses to start and says so.

Migrations that change secrets at rest are handed the operator's keyring
(``keyring`` below) through Alembic's config: ``env.py`` never reads
settings of its own.

Alembic is imported where it is used, not with this module: a server whose
store is already current (`prepare`) never loads it, which keeps 10 MB out
of every serving process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, inspect

from famprov.errors import FamprovError
from famprov.keys import SEALING_REVISION, Keyring
from famprov.store.schema import metadata
from famprov.store.sealed import check_keyring

if TYPE_CHECKING:
    from alembic.config import Config

# The newest migration's revision, which `prepare` compares with the store's
# without loading Alembic. tests/test_store.py holds it equal to the head of
# the migrations themselves.
HEAD = "0007"


class StoreNotReadyError(FamprovError):
    """The database is missing famprov's tables, or is behind them."""


def _config(
    connection: Connection | None = None, keyring: Keyring | None = None
) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "famprov.store:migrations")
    config.attributes["connection"] = connection
    config.attributes["keyring"] = keyring
    return config


def head() -> str:
    from alembic.script import ScriptDirectory

    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None
    return revision


def current(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def known(revision: str) -> bool:
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    try:
        return ScriptDirectory.from_config(_config()).get_revision(revision) is not None
    except CommandError:
        return False


def upgrade(
    engine: Engine, revision: str = "head", *, keyring: Keyring | None = None
) -> None:
    """Migrate to ``revision``; ``keyring`` seals the secrets a migration
    finds in plaintext (none is needed where there are none)."""
    from alembic import command

    found = current(engine)
    if found is not None and not known(found):
        raise _newer(found)
    with _migrating(engine) as conn:
        command.upgrade(_config(conn, keyring), revision)
    # The plaintext the sealing migration replaced stays in the database's
    # files (free pages, the write-ahead log, dead row versions) until the
    # tables are rewritten.
    if found is not None and SEALING_REVISION in _applied(found, current(engine)):
        scrub(engine)


def _applied(before: str, after: str | None) -> set[str]:
    if after is None or after == before:
        return set()
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_config())
    return {rev.revision for rev in script.iterate_revisions(after, before)}


def scrub(engine: Engine) -> None:
    """Rewrite the store's files so that no value a migration replaced stays
    in them: VACUUM and an emptied write-ahead log on SQLite, ``VACUUM
    FULL`` of the tables that held secrets on PostgreSQL."""
    if engine.dialect.name == "sqlite":
        # Outside any transaction, which VACUUM refuses.
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute("VACUUM")
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            cursor.close()
        finally:
            raw.close()
        return
    autocommit = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    with autocommit as conn:
        conn.exec_driver_sql("VACUUM FULL partners, licenses")


def downgrade(engine: Engine, revision: str, *, keyring: Keyring | None = None) -> None:
    from alembic import command

    with _migrating(engine) as conn:
        command.downgrade(_config(conn, keyring), revision)


@contextlib.contextmanager
def _migrating(engine: Engine) -> Iterator[Connection]:
    """A connection to migrate on.

    SQLite changes a table by copying it and dropping the original, which
    its foreign keys refuse while they are enforced: they are switched off
    for the migration (which SQLite allows outside a transaction only), and
    checked whole before they are switched on again.
    """
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        if sqlite:
            raw.execute("PRAGMA foreign_keys=OFF")
        try:
            with conn.begin():
                yield conn
                if sqlite and raw.execute("PRAGMA foreign_key_check").fetchall():
                    raise StoreNotReadyError(
                        "the migration left rows whose reference is missing"
                    )
        finally:
            if sqlite:
                raw.execute("PRAGMA foreign_keys=ON")


def _newer(found: str) -> StoreNotReadyError:
    return StoreNotReadyError(
        f"the database is at revision {found}, which this famprov does not "
        "know: a newer famprov migrated it; run that version here too"
    )


def revision(engine: Engine, message: str) -> str:
    """Autogenerate a migration from the models; return its file's path."""
    if not differences(engine):
        raise StoreNotReadyError(
            "the models and the database agree: there is no migration to write"
        )
    from alembic import command

    with engine.begin() as conn:
        script = command.revision(_config(conn), message=message, autogenerate=True)
    assert script is not None
    assert not isinstance(script, list)
    return str(script.path)


def differences(engine: Engine) -> list[Any]:
    """What the database lacks or holds beyond the models; empty when they agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))


def require_current(engine: Engine) -> None:
    found = current(engine)
    if found is not None and not known(found):
        raise _newer(found)
    if found != head():
        state = "has no famprov tables" if found is None else "is behind famprov"
        raise StoreNotReadyError(
            f"the database {state}: run `famprov db upgrade` first"
        )


def prepare(engine: Engine, keyring: Keyring) -> None:
    """Make the store usable: upgrade SQLite, require PostgreSQL be current;
    then check that ``keyring`` opens the secrets it holds."""
    if recorded(engine) != HEAD:
        if engine.dialect.name == "sqlite":
            upgrade(engine, keyring=keyring)
        else:
            require_current(engine)
    check_keyring(engine, keyring)


def recorded(engine: Engine) -> str | None:
    """The revision the store records, read without Alembic: None for a
    store without famprov's tables."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        found = conn.exec_driver_sql("SELECT version_num FROM alembic_version")
        return found.scalar()
