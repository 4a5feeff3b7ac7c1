"""The writer process: ``python -m famprov.store.writer_process``.

Started by `famprov.store.writer.BatchWriter`, with its socket as standard
input. It reads its settings (the store's URL, the factory of the function
to apply and its argument, the largest batch, the log settings) as the
first message, and answers ``ready`` once the store answers. Then jobs
arrive as the serving process takes them; each batch is every job that
arrived while the last one was written: the process applies the function to
it in one transaction, commits, and sends back one outcome per job, with
the seconds the batch took. A job's
domain refusal is an outcome like any other. A batch that read a row another
writer changed before it wrote (`StaleReadError`) is written again from a
fresh read; a database error rolls the batch back and each job is then
written in a transaction of its own, so that one bad job never fails its
neighbours. It leaves when its socket closes.
"""

from __future__ import annotations

import collections
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

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from famprov import logs
from famprov.logs import log
from famprov.store import WRITE, is_reachable, open_engine
from famprov.store.checkpoint import Checkpoints, prepare_writer
from famprov.store.writer import HEADER, StaleReadError, frame

Apply = Callable[[Connection, Sequence[Any], datetime], list[Any]]
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
    engine = open_engine(make_url(config["database"]))
    module, _, name = config["target"].partition(":")
    factory: Callable[[Any], Apply] = getattr(importlib.import_module(module), name)
    apply = factory(config["argument"])
    if not is_reachable(engine):
        channel.sendall(frame(("failed", "the database does not answer")))
        return
    writer = _Writer(engine, apply)
    checkpoints = Checkpoints(needed=engine.dialect.name == "sqlite")
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
        engine.dispose()


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
    """Batches into transactions, on one connection kept between them."""

    def __init__(self, engine: Engine, apply: Apply) -> None:
        self._engine = engine
        self._apply = apply
        self._conn: Connection | None = None
        driver = engine.dialect.loaded_dbapi
        self._lost_races = (IntegrityError, driver.IntegrityError, StaleReadError)

    def write(self, jobs: Sequence[Any], now: datetime) -> list[Any]:
        for attempt in range(RETRIES + 1):
            try:
                conn = self._connection()
                with conn.begin():
                    outcomes = self._apply(conn, jobs, now)
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
                conn = self._connection()
                with conn.begin():
                    [outcome] = self._apply(conn, [job], now)
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

    def checkpoint(self, checkpoints: Checkpoints) -> None:
        """The checkpoint the schedule waits for, if any."""
        if checkpoints.wait() is None:
            return
        try:
            conn = self._connection()
        except Exception as exc:
            log.warning("checkpoint_failed", error=type(exc).__name__)
            return
        checkpoints.run(conn)

    def _connection(self) -> Connection:
        if self._conn is None:
            conn = self._engine.connect().execution_options(**WRITE)
            prepare_writer(conn)
            self._conn = conn
        return self._conn

    def close(self) -> None:
        """Let the connection go; after an error, the next batch reconnects."""
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception as exc:
                log.warning("writer_close_failed", error=type(exc).__name__)
            self._conn = None


if __name__ == "__main__":
    main()
