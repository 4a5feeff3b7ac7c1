"""Driver-level SQL for the grant path, on either backend.

The batching writer runs a handful of statements per batch, each over many
rows; at that rate SQLAlchemy's per-row work costs more than the database's.
These helpers let that one path hand plain SQL and tuples to the driver,
with the placeholders and the storage of times each backend expects. Every
other path goes through SQLAlchemy Core.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class AnyOf:
    """``column {test}`` with ``params``: a test against a list of values."""

    test: str
    params: tuple[Any, ...]


class RawSQL:
    def __init__(self, dialect: str) -> None:
        self._sqlite = dialect == "sqlite"

    @property
    def is_sqlite(self) -> bool:
        return self._sqlite

    def any_of(self, values: list[Any]) -> AnyOf:
        """SQLite takes a list of placeholders; PostgreSQL one array, which
        keeps the statement's text the same for every batch, so the server
        plans it once."""
        if self._sqlite:
            return AnyOf(f"IN ({self.marks(len(values))})", tuple(values))
        return AnyOf("= ANY(?)", (values,))

    def sql(self, text: str) -> str:
        """Write statements with ``?``; psycopg takes ``%s``."""
        return text if self._sqlite else text.replace("?", "%s")

    def marks(self, count: int) -> str:
        return ", ".join(["?"] * count)

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
