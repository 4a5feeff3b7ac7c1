"""Driver-level SQL for the grant path, on either backend.

The batching writer runs a handful of statements per batch, each over many
rows, in a process of its own that does not load SQLAlchemy at all (about
28 MB of memory, and its per-statement work): `RawSQL` hands plain SQL and
values straight to a driver connection (sqlite3 or psycopg), with the
placeholders, lists and times each backend expects. `RawSQL.on` gives the
same under a SQLAlchemy connection, inside its transaction, for the few
reads elsewhere that share the writer's statements. Every other path goes
through SQLAlchemy Core.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy import Connection


@dataclass(frozen=True, slots=True)
class AnyOf:
    """``column {test}`` with ``params``: a test against a list of values."""

    test: str
    params: tuple[Any, ...]


def json_list(values: Sequence[Any]) -> str:
    """A JSON array, one value for many rows (times as their text, which
    PostgreSQL reads back as timestamps)."""
    return json.dumps(values, ensure_ascii=False, separators=(",", ":"), default=str)


class RawSQL:
    """Statements written with ``?`` placeholders, run on the driver."""

    def __init__(self, driver: Any, *, sqlite: bool) -> None:
        self._driver = driver
        self._sqlite = sqlite

    @classmethod
    def on(cls, conn: Connection) -> RawSQL:
        """The driver connection under a SQLAlchemy connection, inside its
        transaction."""
        return cls(
            conn.connection.driver_connection, sqlite=conn.dialect.name == "sqlite"
        )

    @property
    def driver(self) -> Any:
        return self._driver

    @property
    def is_sqlite(self) -> bool:
        return self._sqlite

    def execute(self, statement: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement; the result iterates over its rows."""
        return self._driver.execute(self.sql(statement), params)

    def execute_many(self, statement: str, params: Iterable[Sequence[Any]]) -> None:
        self._driver.cursor().executemany(self.sql(statement), params)

    def any_of(self, values: list[Any]) -> AnyOf:
        """One parameter for the whole list, so that the statement's text is
        the same for every batch and is prepared once: a JSON array on
        SQLite, an array on PostgreSQL."""
        if self._sqlite:
            return AnyOf("IN (SELECT value FROM json_each(?))", (json_list(values),))
        return AnyOf("= ANY(?)", (values,))

    def sql(self, text: str) -> str:
        """Write statements with ``?``; psycopg takes ``%s``."""
        return text if self._sqlite else text.replace("?", "%s")

    def time(self, value: datetime) -> Any:
        """A time as `famprov.store.schema.UTCDateTime` stores it."""
        naive = value.astimezone(UTC).replace(tzinfo=None)
        # SQLAlchemy keeps SQLite datetimes as text in exactly this form.
        return naive.strftime("%Y-%m-%d %H:%M:%S.%f") if self._sqlite else naive

    def read_time(self, value: Any) -> datetime:
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)
