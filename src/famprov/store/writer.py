"""The batching writer: many grants, one commit.

A durable commit costs a disk flush, and a flush per grant caps the service
at a few thousand grants a second. The writer thread takes every job queued
since its last commit, hands them to ``apply(connection, jobs)`` inside one
transaction, commits once, and only then answers each job's caller: no grant
is acknowledged before it is on disk.

``apply`` returns one outcome per job, a result or a domain error; a job
refused with a domain error wrote nothing, so it fails alone. A database
error rolls the whole batch back, and each job is then written in a
transaction of its own, so that one bad job never fails its neighbours.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError

from famprov.errors import FamprovError
from famprov.logs import log
from famprov.store import WRITE
from famprov.store.checkpoint import Checkpointer, prepare_writer

J = TypeVar("J")
R = TypeVar("R")

ApplyBatch = Callable[[Connection, Sequence[J]], list["R | FamprovError"]]


@dataclass(slots=True)
class _Item(Generic[J, R]):
    job: J
    future: asyncio.Future[R]
    loop: asyncio.AbstractEventLoop


# TODO: grants top out near 5,000/s on SQLite where the writer alone commits
# 13,000 (docs/performance.md): under load the writer waits longer than it
# works, and each request that waits for its batch costs the event loop
# about 50 µs more than one answered at once. A writer process was tried and
# gained only a fifth; the waiting path is where the rest is.


class WriterClosedError(RuntimeError):
    """The writer was stopped before the job could be written."""


class BatchWriter(Generic[J, R]):
    """Runs ``apply`` over the queued jobs, one commit per batch.

    ``threads`` writer threads take batches from one queue, each on a
    connection of its own, so that one batch can be written while another
    waits for its commit to reach the disk. SQLite takes one writer at a
    time, so there it is one thread.
    """

    _STOP = object()

    def __init__(
        self,
        engine: Engine,
        apply: ApplyBatch[J, R],
        *,
        max_batch: int = 256,
        threads: int = 1,
        after_commit: Callable[[int, float], None] | None = None,
        retries: int = 3,
    ) -> None:
        if threads < 1 or (threads > 1 and engine.dialect.name == "sqlite"):
            raise ValueError("SQLite takes one writer thread")
        self._engine = engine
        self._apply = apply
        self._max_batch = max_batch
        self._after_commit = after_commit
        self._retries = retries
        self._queue: queue.SimpleQueue[_Item[J, R] | object] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._run, name=f"famprov-writer-{n}", daemon=True)
            for n in range(threads)
        ]
        self._closed = False
        # It turns SQLite's automatic checkpoints off; these run instead.
        self._checkpointer = Checkpointer(engine)
        driver = engine.dialect.loaded_dbapi
        self._integrity_errors = (IntegrityError, driver.IntegrityError)

    def start(self) -> None:
        self._checkpointer.start()
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Write what is queued, then stop the threads."""
        self._closed = True
        for _ in self._threads:
            self._queue.put(self._STOP)
        for thread in self._threads:
            if thread.is_alive():
                thread.join()
        self._checkpointer.stop()

    async def write(self, job: J) -> R:
        """Queue the job and wait, without blocking the loop, for its commit."""
        if self._closed:
            raise WriterClosedError("the writer is stopped")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.put(_Item(job, future, loop))
        return await future

    def _run(self) -> None:
        session = _Session(self._engine)
        try:
            while True:
                batch, stop = self._take()
                if batch:
                    self._write_batch(session, batch)
                if stop:
                    return
        finally:
            session.close()

    def _take(self) -> tuple[list[_Item[J, R]], bool]:
        first = self._queue.get()
        if first is self._STOP:
            return [], True
        batch: list[_Item[J, R]] = [first]  # type: ignore[list-item]
        while len(batch) < self._max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is self._STOP:
                return batch, True
            batch.append(item)  # type: ignore[arg-type]
        return batch, False

    def _write_batch(self, session: _Session, batch: list[_Item[J, R]]) -> None:
        started = time.perf_counter()
        try:
            conn = session.connection()
            with conn.begin():
                outcomes = self._apply(conn, [item.job for item in batch])
        except Exception as exc:
            session.close()
            log.warning(
                "writer_batch_failed", batch=len(batch), error=type(exc).__name__
            )
            for item in batch:
                self._write_alone(session, item)
            return
        self._committed(len(batch), time.perf_counter() - started)
        _settle(list(zip(batch, outcomes, strict=True)))

    def _write_alone(self, session: _Session, item: _Item[J, R]) -> None:
        """Write one job in its own transaction, retrying lost races."""
        for attempt in range(self._retries + 1):
            started = time.perf_counter()
            try:
                conn = session.connection()
                with conn.begin():
                    [outcome] = self._apply(conn, [item.job])
            except self._integrity_errors as exc:
                # A unique key taken by another writer between our read and
                # our insert: read again, and the job sees the winner's row.
                if attempt < self._retries:
                    continue
                _settle([(item, exc)])
                return
            except Exception as exc:
                session.close()
                _settle([(item, exc)])
                return
            self._committed(1, time.perf_counter() - started)
            _settle([(item, outcome)])
            return

    def _committed(self, jobs: int, seconds: float) -> None:
        if self._after_commit is not None:
            self._after_commit(jobs, seconds)


class _Session:
    """A writer thread's connection, kept from batch to batch."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Connection | None = None

    def connection(self) -> Connection:
        if self._conn is None:
            conn = self._engine.connect().execution_options(**WRITE)
            prepare_writer(conn)
            self._conn = conn
        return self._conn

    def close(self) -> None:
        """Let the connection go; after an error, the next batch reconnects."""
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


_Done = list[tuple[_Item[Any, Any], Any]]


def _settle(done: _Done) -> None:
    """Answer every caller, with one wake-up per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, _Done] = defaultdict(list)
    for item, outcome in done:
        by_loop[item.loop].append((item, outcome))
    for loop, pairs in by_loop.items():
        # A closed loop has nobody waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, pairs)


def _resolve(pairs: _Done) -> None:
    for item, outcome in pairs:
        if item.future.done():
            continue  # the caller went away (its request was cancelled)
        if isinstance(outcome, BaseException):
            item.future.set_exception(outcome)
        else:
            item.future.set_result(outcome)
