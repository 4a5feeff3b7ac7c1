"""WAL checkpoints of the embedded SQLite store, run by the batching writer.

In WAL mode SQLite copies its log back into the database file every 1,000
pages, in whichever connection commits at that moment, and that COMMIT only
returns once the copy and its flush are done: every grant of the batch would
wait for it. So the batching writer's connection turns automatic checkpoints
off (`prepare_writer`) and checkpoints on a schedule of its own
(`Checkpoints`): after a batch's answers are sent, at most every
`INTERVAL_SECONDS`, and when no batch came for that long.

The writer runs the checkpoint itself, between batches, because only then
can the log start over. SQLite rewinds the log at the next write once every
frame in it is in the database file; a checkpoint running beside the writer
(the earlier design: a thread of its own) never catches up with the frames
the writer keeps adding, so the log grew to `RESTART_PAGES` a few times a
second, and each blocking RESTART checkpoint that then brought it back held
up a batch for as long as 110 ms. Should readers hold the log all the same
(a passive checkpoint does not wait for them), one RESTART checkpoint brings
it back once it passes `RESTART_PAGES`.
"""

from __future__ import annotations

import time
from typing import Any

from famprov.logs import log

INTERVAL_SECONDS = 0.25
RESTART_PAGES = 16_384  # 64 MiB of 4 KiB pages


def prepare_writer(driver: Any) -> None:
    """Set up the batching writer's own sqlite3 connection."""
    driver.execute("PRAGMA wal_autocheckpoint=0")


class Checkpoints:
    """When the writer checkpoints: once commits are waiting and the last
    checkpoint is `INTERVAL_SECONDS` old. A store that needs none (PostgreSQL)
    is never due."""

    def __init__(self, needed: bool, interval: float = INTERVAL_SECONDS) -> None:
        self._needed = needed
        self._interval = interval
        self._last = time.monotonic()
        self._waiting = False

    def committed(self) -> None:
        self._waiting = self._needed

    def wait(self) -> float | None:
        """How long the writer may wait for a batch before a checkpoint is
        due; None when none will be."""
        if not self._waiting:
            return None
        return max(self._last + self._interval - time.monotonic(), 0.0)

    def due(self) -> bool:
        return self.wait() == 0.0

    def run(self, driver: Any) -> None:
        """Checkpoint on the writer's sqlite3 connection, outside any
        transaction."""
        self._waiting = False
        self._last = time.monotonic()
        try:
            _busy, pages, _copied = driver.execute(
                "PRAGMA wal_checkpoint(PASSIVE)"
            ).fetchone()
            if pages > RESTART_PAGES:
                driver.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        except Exception as exc:
            # The next one tries again; a lasting problem shows in the
            # writer's own errors.
            log.warning("checkpoint_failed", error=type(exc).__name__)
