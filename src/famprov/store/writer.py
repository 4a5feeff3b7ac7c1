"""The batching writer: many grants, one commit.

A durable commit costs a disk flush, and a flush per grant caps the service
at a few thousand grants a second. The writer thread takes every job queued
since its last commit, applies them one by one inside one transaction, commits
once, and only then answers each job's caller: no grant is acknowledged before
it is on disk. A job that raises a domain error wrote nothing, so it fails
alone; a database error rolls the batch back and each job is replayed in a
transaction of its own, so one bad job never fails its neighbours.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError

from famprov.errors import FamprovError
from famprov.logs import log
from famprov.store import WRITE

J = TypeVar("J")
R = TypeVar("R")

Apply = Callable[[Connection, J], R]


@dataclass(slots=True)
class _Item(Generic[J, R]):
    job: J
    future: Future[R]


class WriterClosedError(RuntimeError):
    """The writer was stopped before the job could be written."""


class BatchWriter(Generic[J, R]):
    """Run ``apply(connection, job)`` for queued jobs, one commit per batch."""

    _STOP = object()

    def __init__(
        self,
        engine: Engine,
        apply: Apply[J, R],
        *,
        max_batch: int = 256,
        after_commit: Callable[[], None] | None = None,
        retries: int = 3,
    ) -> None:
        self._engine = engine
        self._apply = apply
        self._max_batch = max_batch
        self._after_commit = after_commit
        self._retries = retries
        self._queue: queue.SimpleQueue[_Item[J, R] | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name="famprov-writer", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Write what is queued, then stop the thread."""
        self._closed = True
        self._queue.put(self._STOP)
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def submit(self, job: J) -> Future[R]:
        if self._closed:
            raise WriterClosedError("the writer is stopped")
        future: Future[R] = Future()
        self._queue.put(_Item(job, future))
        return future

    async def write(self, job: J) -> R:
        """Queue the job and wait, without blocking the event loop, for its commit."""
        return await asyncio.wrap_future(self.submit(job))

    def _run(self) -> None:
        while True:
            batch, stop = self._take()
            if batch:
                self._write_batch(batch)
            if stop:
                return

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

    def _write_batch(self, batch: list[_Item[J, R]]) -> None:
        outcomes: list[tuple[_Item[J, R], R | FamprovError]] = []
        try:
            with self._connect() as conn, conn.begin():
                for item in batch:
                    outcomes.append((item, self._apply_one(conn, item.job)))
        except Exception as exc:
            log.warning(
                "writer_batch_failed",
                batch=len(batch),
                error=type(exc).__name__,
            )
            for item in batch:
                self._write_alone(item)
            return
        self._committed()
        for item, outcome in outcomes:
            _resolve(item.future, outcome)

    def _connect(self) -> Connection:
        return self._engine.connect().execution_options(**WRITE)

    def _apply_one(self, conn: Connection, job: J) -> R | FamprovError:
        try:
            return self._apply(conn, job)
        except FamprovError as exc:
            return exc

    def _write_alone(self, item: _Item[J, R]) -> None:
        """Write one job in its own transaction, retrying lost races."""
        for attempt in range(self._retries + 1):
            try:
                with self._connect() as conn, conn.begin():
                    outcome = self._apply_one(conn, item.job)
            except IntegrityError as exc:
                # A unique key taken by another process between our read and
                # our insert: read again, and the job sees the winner's row.
                if attempt < self._retries:
                    continue
                item.future.set_exception(exc)
                return
            except Exception as exc:
                item.future.set_exception(exc)
                return
            self._committed()
            _resolve(item.future, outcome)
            return

    def _committed(self) -> None:
        if self._after_commit is not None:
            self._after_commit()


def _resolve(future: Future[R], outcome: R | FamprovError) -> None:
    if isinstance(outcome, FamprovError):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
