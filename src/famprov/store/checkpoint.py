"""WAL checkpoints beside the grant path, on the embedded SQLite store.

In WAL mode SQLite copies its log back into the database file every 1,000
pages, in whichever connection commits at that moment, and that COMMIT only
returns once the copy and its flush are done: every grant of the batch would
wait for it, and the slowest answers would be the checkpoints'. So the
batching writer's connection turns automatic checkpoints off
(`prepare_writer`), and a `Checkpointer` thread runs passive checkpoints
beside it, which never hold up a commit. Should the log outgrow
`RESTART_PAGES` all the same (the writer never pausing long enough for a
passive checkpoint to reach its end), one blocking checkpoint brings it back.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import Connection, Engine

from famprov.logs import log

INTERVAL_SECONDS = 0.25
RESTART_PAGES = 4_096  # 16 MiB of 4 KiB pages
# The writer's page cache: the unique indexes of order numbers and vault
# tokens take random keys, so their pages are touched all over.
WRITER_CACHE_KIB = 8_192


def prepare_writer(conn: Connection) -> None:
    """Set up the batching writer's own connection."""
    if conn.dialect.name != "sqlite":
        return
    driver: Any = conn.connection.driver_connection
    driver.execute("PRAGMA wal_autocheckpoint=0")
    driver.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")


class Checkpointer:
    """A thread that checkpoints the WAL of a SQLite store now and then."""

    def __init__(self, engine: Engine, interval: float = INTERVAL_SECONDS) -> None:
        self._engine = engine
        self._interval = interval
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def needed(self) -> bool:
        return self._engine.dialect.name == "sqlite"

    def start(self) -> None:
        if not self.needed:
            return
        self._thread = threading.Thread(
            target=self._run, name="famprov-checkpoint", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        with self._engine.connect() as conn:
            driver: Any = conn.connection.driver_connection
            while not self._stopping.wait(self._interval):
                self._checkpoint(driver)
            # The writer has stopped: what it wrote last goes in too.
            self._checkpoint(driver)

    def _checkpoint(self, driver: Any) -> None:
        try:
            _busy, pages, _copied = driver.execute(
                "PRAGMA wal_checkpoint(PASSIVE)"
            ).fetchone()
            if pages > RESTART_PAGES:
                driver.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        except Exception as exc:
            # The next round tries again; a lasting problem shows in the
            # writer's own errors.
            log.warning("checkpoint_failed", error=type(exc).__name__)
