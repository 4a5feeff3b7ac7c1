"""The store: one SQLAlchemy engine over SQLite (embedded) or PostgreSQL.

famprov talks to the database through synchronous SQLAlchemy Core on its own
threads: grants through the batching writer (`famprov.store.writer`), reads
and operator commands through short transactions. The URL may name an async
driver (``sqlite+aiosqlite``, ``postgresql+asyncpg``); the store picks the
matching synchronous driver for the same database.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from famprov.errors import FamprovError

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.engine import URL

# SQLAlchemy is imported in the functions that use it, not here: the writer
# process imports modules of this package (`famprov.store.writer_process`)
# and never loads SQLAlchemy (docs/performance.md).

_SYNC_DRIVERS = {
    "sqlite": "sqlite+pysqlite",
    "postgresql": "postgresql+psycopg",
}
_DBAPI_MODULES = {"sqlite": "sqlite3", "postgresql": "psycopg"}


class StoreFolderError(FamprovError):
    """The SQLite file's folder is missing."""


# Execution option that makes a SQLite transaction take the write lock at
# BEGIN, so two writers queue on busy_timeout instead of failing on upgrade.
WRITE = {"famprov_write": True}


def sync_url(url: URL) -> URL:
    """Return the same database's URL with the driver famprov runs on."""
    return url.set(drivername=_SYNC_DRIVERS[url.get_backend_name()])


def connect_arguments(url: URL) -> tuple[str, list[Any], dict[str, Any]]:
    """How to open a driver connection to the store without SQLAlchemy (the
    writer process does): the DBAPI module's name, and the arguments and
    keywords of its ``connect``, as SQLAlchemy's dialect works them out."""
    url = sync_url(url)
    dialect = url.get_dialect()()
    args, kwargs = dialect.create_connect_args(url)
    return _DBAPI_MODULES[url.get_backend_name()], list(args), dict(kwargs)


def open_engine(url: URL, *, echo: bool = False) -> Engine:
    """Create the engine, with SQLite set up for durable concurrent use."""
    from sqlalchemy import create_engine, event

    url = sync_url(url)
    if url.get_backend_name() != "sqlite":
        return create_engine(url, echo=echo, pool_pre_ping=True, hide_parameters=True)

    if url.database and url.database != ":memory:":
        folder = Path(url.database).parent
        if not folder.is_dir():
            # A mistyped path must not quietly become a new, empty store.
            raise StoreFolderError(f"the database folder {folder} does not exist")
    # Statement values (emails, tokens, salts) never appear in the text of
    # an error or a log line.
    engine = create_engine(url, echo=echo, hide_parameters=True)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        prepare_sqlite(dbapi_connection)

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = (
            "IMMEDIATE"
            if connection.get_execution_options().get("famprov_write")
            else "DEFERRED"
        )
        connection.exec_driver_sql(f"BEGIN {mode}")

    return engine


def prepare_sqlite(dbapi_connection: Any) -> None:
    """Set up a sqlite3 connection to the embedded store, the writer
    process's included."""
    # The driver's own transaction handling is switched off so that each
    # BEGIN is ours, with the lock mode we choose.
    dbapi_connection.isolation_level = None
    dbapi_connection.execute("PRAGMA journal_mode=WAL")
    dbapi_connection.execute("PRAGMA synchronous=FULL")
    dbapi_connection.execute("PRAGMA foreign_keys=ON")
    dbapi_connection.execute("PRAGMA busy_timeout=10000")


def is_reachable(engine: Engine) -> bool:
    """True when the database answers a trivial query."""
    from sqlalchemy import text

    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception:
        return False
    return True
