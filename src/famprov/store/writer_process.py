"""The writer process: ``python -m famprov.store.writer_process``.

Started by `famprov.store.writer.BatchWriter`, with its socket as standard
input. It reads its settings (how to connect to the store, the factory of
the function to apply and its argument, the largest batch, the log
settings) as the first message, and answers ``ready`` once the store
answers. Then jobs arrive as the serving process takes them; each batch is
every job that arrived while the last one was written: the process applies
the function to it in one transaction, commits, and sends back one outcome
per job, with the seconds the batch took. A job's domain refusal is an
outcome like any other. A batch that read a row another
writer changed before it wrote (`StaleReadError`) is written again from a
fresh read; a database error rolls the batch back and each job is then
written in a transaction of its own, so that one bad job never fails its
neighbours. It leaves when its socket closes.

It talks to the store through the driver alone (sqlite3 or psycopg, with
`famprov.store.raw`), and never loads SQLAlchemy: about 28 MB less memory,
held for the whole life of the server.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import importlib
import pickle
import select
import signal
import socket
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from famprov import logs
from famprov.logs import log
from famprov.store import prepare_sqlite
from famprov.store.checkpoint import Checkpoints, prepare_writer
from famprov.store.raw import RawSQL
from famprov.store.writer import HEADER, StaleReadError, frame

Apply = Callable[[RawSQL, Sequence[Any], datetime], list[Any]]
RETRIES = 3


def main() -> None:
    # Ctrl-C in a terminal, and a service manager's SIGTERM, reach the whole
    # process group; the serving process decides when this one stops, by
    # closing its socket once the requests in flight are answered.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    channel = socket.socket(fileno=0)
    config = _read(channel)
    if config is None:
        return
    logs.configure(config["log_format"], config["log_level"])
    module, _, name = config["target"].partition(":")
    factory: Callable[[Any], Apply] = getattr(importlib.import_module(module), name)
    writer = _Writer(config["connect"], factory(config["argument"]))
    if not writer.reachable():
        channel.sendall(frame(("failed", "the database does not answer")))
        return
    checkpoints = Checkpoints(needed=writer.sqlite)
    # What is loaded by now stays to the end: out of the collector's passes.
    gc.freeze()
    channel.sendall(frame(("ready", None)))
    queue: collections.deque[tuple[datetime, Any]] = collections.deque()
    max_batch: int = config["max_batch"]
    try:
        while True:
            if not queue and not _arrives(channel, checkpoints.wait()):
                # No job for a while: the commits so far go in now.
                writer.checkpoint(checkpoints)
                continue
            # The batch: what has arrived since the last one was committed.
            while not queue or _arrives(channel, 0):
                if (message := _read(channel)) is None:
                    return
                now, jobs = message
                queue.extend((now, job) for job in jobs)
            batch = [queue.popleft() for _ in range(min(len(queue), max_batch))]
            started = time.perf_counter()
            # The batch is decided at the time of its newest job.
            outcomes = writer.write([job for _, job in batch], batch[-1][0])
            channel.sendall(frame((outcomes, time.perf_counter() - started)))
            checkpoints.committed()
            # After the answers, so that no batch waits on it but the next.
            if checkpoints.due():
                writer.checkpoint(checkpoints)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the serving process is gone; so is everyone waiting
    finally:
        # What was written last goes into the database file too.
        writer.checkpoint(checkpoints)
        writer.close()


def _arrives(channel: socket.socket, within: float | None) -> bool:
    """Whether the serving process sends something (or closes) ``within``
    seconds; None waits as long as it takes."""
    if within is None:
        return True
    readable, _, _ = select.select([channel], [], [], within)
    return bool(readable)


def _read(channel: socket.socket) -> Any:
    """The next message, or None once the serving process has closed."""
    header = _exactly(channel, HEADER)
    if header is None:
        return None
    payload = _exactly(channel, int.from_bytes(header, "big"))
    if payload is None:
        return None
    return pickle.loads(payload)  # noqa: S301 - from our parent, on a private socket pair


def _exactly(channel: socket.socket, size: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = channel.recv(size - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)


class _Writer:
    """Batches into transactions, on one driver connection kept between them.

    ``connect`` is (DBAPI module, arguments, keywords), worked out from the
    store's URL by the serving process (`famprov.store.connect_arguments`).
    """

    def __init__(self, connect: tuple[str, list[Any], dict[str, Any]], apply: Apply):
        dbapi_name, self._args, self._kwargs = connect
        self._dbapi: Any = importlib.import_module(dbapi_name)
        self.sqlite = dbapi_name == "sqlite3"
        self._apply = apply
        self._sql: RawSQL | None = None
        self._lost_races = (self._dbapi.IntegrityError, StaleReadError)

    def reachable(self) -> bool:
        try:
            self._connection().execute("SELECT 1").fetchone()
        except Exception:
            self.close()
            return False
        return True

    def write(self, jobs: Sequence[Any], now: datetime) -> list[Any]:
        for attempt in range(RETRIES + 1):
            try:
                outcomes = self._transaction(jobs, now)
            except StaleReadError:
                # Another writer moved first (a partner's quota counter):
                # the whole batch again, from a fresh read.
                if attempt < RETRIES:
                    continue
                log.warning("writer_batch_stale", batch=len(jobs))
            except Exception as exc:
                self.close()
                log.warning(
                    "writer_batch_failed", batch=len(jobs), error=type(exc).__name__
                )
            else:
                return [("ok", outcome) for outcome in outcomes]
            break
        return [self._write_alone(job, now) for job in jobs]

    def _write_alone(self, job: Any, now: datetime) -> Any:
        """Write one job in its own transaction, retrying lost races."""
        for attempt in range(RETRIES + 1):
            try:
                [outcome] = self._transaction([job], now)
            except self._lost_races as exc:
                # A unique key taken, or a row changed, by another writer
                # between our read and our write: read again, and the job
                # sees the winner's rows.
                if attempt < RETRIES:
                    continue
                return ("failed", type(exc).__name__)
            except Exception as exc:
                # Only the type: the message of a database error can hold
                # the statement's values, emails and tokens among them.
                self.close()
                log.error("writer_job_failed", error=type(exc).__name__)
                return ("failed", type(exc).__name__)
            return ("ok", outcome)
        raise AssertionError("unreachable")

    def _transaction(self, jobs: Sequence[Any], now: datetime) -> list[Any]:
        """The jobs applied in one transaction, committed; rolled back on
        any error. SQLite's takes the write lock at BEGIN; PostgreSQL's
        begins at the first statement (psycopg)."""
        sql = self._connection()
        driver = sql.driver
        if self.sqlite:
            driver.execute("BEGIN IMMEDIATE")
        try:
            outcomes = self._apply(sql, jobs, now)
        except BaseException:
            with contextlib.suppress(Exception):
                driver.rollback()  # a broken connection is closed by the caller
            raise
        driver.commit()
        return outcomes

    def checkpoint(self, checkpoints: Checkpoints) -> None:
        """The checkpoint the schedule waits for, if any."""
        if checkpoints.wait() is None:
            return
        try:
            sql = self._connection()
        except Exception as exc:
            log.warning("checkpoint_failed", error=type(exc).__name__)
            return
        checkpoints.run(sql.driver)

    def _connection(self) -> RawSQL:
        if self._sql is None:
            driver = self._dbapi.connect(*self._args, **self._kwargs)
            if self.sqlite:
                prepare_sqlite(driver)
                prepare_writer(driver)
            self._sql = RawSQL(driver, sqlite=self.sqlite)
        return self._sql

    def close(self) -> None:
        """Let the connection go; after an error, the next batch reconnects."""
        if self._sql is not None:
            try:
                self._sql.driver.close()
            except Exception as exc:
                log.warning("writer_close_failed", error=type(exc).__name__)
            self._sql = None


if __name__ == "__main__":
    main()
