"""The batching writer: many grants, one commit, in a process of its own.

A durable commit costs a disk flush, and a flush per grant caps the service
at a few thousand grants a second. So the serving process sends each job to
a writer process as it comes, and the writer process applies every job that
arrived while it wrote its last batch (``apply(sql, jobs, now)``) in one
transaction, commits once, and only then sends back one outcome per job:
no grant is acknowledged before it is on disk.

The writer is a process, not a thread, because of the interpreter lock:
each statement a writer thread runs lets the lock go and must take it back
from the event loop, which holds it for whole rounds of requests. Measured
on two cores (docs/performance.md), one such hand-over cost the writer
thread about 1.8 ms, several times a batch, and the rate of grants was set
by those waits. A process has an interpreter of its own; the serving
process only writes a message per round of its event loop to a socket, and
reads one back per batch.

Jobs and outcomes cross as plain values (see ``encode``/``decode`` of the
caller), in length-prefixed pickles over a socket pair that only the two
processes hold. The writer process leaves when its socket closes, so it
never outlives the serving process. If it dies, a new one is started and
given the jobs it had in hand, written or not: sent again, a job is a
replay of its transaction id.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import pickle
import socket
import subprocess
import sys
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from famprov.errors import FamprovError
from famprov.logs import log
from famprov.store import connect_arguments

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

J = TypeVar("J")
R = TypeVar("R")

HEADER = 4  # bytes of big-endian length before each message
START_TIMEOUT_SECONDS = 60
STOP_TIMEOUT_SECONDS = 30
RESTART_DELAY_SECONDS = 1.0
MAX_TRIES = 2  # writer processes a job is sent to before it fails


_Job = tuple[Any, "asyncio.Future[Any]", int]


class WriterClosedError(RuntimeError):
    """The writer was stopped, or its process died, before the job was
    written (or before it could say so)."""


class WriterFailedError(RuntimeError):
    """The writer could not write the job: a database error, not a refusal."""


class StaleReadError(RuntimeError):
    """Raised by a batch's function when a row it read was changed by another
    writer before it could write: the batch is rolled back and written again,
    from a fresh read."""


def frame(message: Any) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return len(payload).to_bytes(HEADER, "big") + payload


class BatchWriter(Generic[J, R]):
    """Writes jobs in batches through ``processes`` writer processes.

    ``target`` names, as ``module:function``, the factory of the function
    the writer process applies to a batch: it is called there once with
    ``argument`` (sent over the socket, never on a command line or in the
    environment: it may hold keys). ``encode`` turns a job into what
    crosses to it, and ``decode`` an outcome into the result, or raises its
    domain error.

    Jobs go to a writer process as they come, one message for each round
    of the event loop, to the process with the fewest jobs in hand; the
    process makes its next batch of whatever has arrived by the time the
    last one is committed (up to ``max_batch``), and answers each batch's
    jobs in the order they were sent. So a writer process never waits for
    the serving process to take its answers before it starts the next
    batch. SQLite takes one writer process, PostgreSQL several.
    """

    def __init__(
        self,
        database: URL,
        target: str,
        *,
        argument: Any = None,
        encode: Callable[[J], Any],
        decode: Callable[[Any], R],
        clock: Callable[[], datetime],
        processes: int = 1,
        max_batch: int = 256,
        log_format: str = "json",
        log_level: str = "info",
        after_commit: Callable[[int, float], None] | None = None,
    ) -> None:
        if processes < 1 or (processes > 1 and database.get_backend_name() == "sqlite"):
            raise ValueError("SQLite takes one writer process")
        self._config = {
            "connect": connect_arguments(database),
            "target": target,
            "argument": argument,
            "max_batch": max_batch,
            "log_format": log_format,
            "log_level": log_level,
        }
        self._encode = encode
        self._decode = decode
        self._clock = clock
        self._processes = processes
        self._after_commit = after_commit
        self._children: list[_Child] = []
        # Each job not yet sent, with its caller's future and the writers it
        # was sent to.
        self._pending: list[_Job] = []
        self._dispatching = False
        self._closed = False
        self._tasks: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        """Start the writer processes; raise if one cannot open the store."""
        await asyncio.gather(*(self._spawn() for _ in range(self._processes)))

    async def stop(self) -> None:
        """Close the writers' sockets and wait for them to finish and leave."""
        self._closed = True
        self._fail_pending("the writer is stopped")
        children, self._children = self._children, []
        for child in children:
            child.close()
        await asyncio.gather(*(child.wait() for child in children))
        await asyncio.gather(*self._tasks)

    async def write(self, job: J) -> R:
        """Queue the job and wait, without blocking the loop, for its commit."""
        if self._closed:
            raise WriterClosedError("the writer is stopped")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((self._encode(job), future, 0))
        self._dispatch_soon()
        return await future

    def _dispatch_soon(self) -> None:
        """Send what is pending once this round of the loop is over: the
        jobs queued in the same round share a message."""
        if not self._dispatching:
            self._dispatching = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._dispatching = False
        if not self._pending or not self._children:
            return  # a writer process being started takes them once it is
        jobs, self._pending = self._pending, []
        child = min(self._children, key=lambda child: child.in_hand)
        child.send_jobs(self._clock(), jobs)

    def _finished(self, child: _Child, outcomes: list[Any], seconds: float) -> None:
        """A batch was committed: its outcomes answer, in order, the oldest
        jobs the child had in hand."""
        futures = [future for _, future, _ in child.take(len(outcomes))]
        if self._after_commit is not None:
            self._after_commit(len(futures), seconds)
        for future, (kind, value) in zip(futures, outcomes, strict=True):
            if future.done():
                continue  # the caller went away (its request was cancelled)
            if kind == "failed":
                future.set_exception(WriterFailedError(value))
                continue
            try:
                future.set_result(self._decode(value))
            except FamprovError as exc:
                future.set_exception(exc)

    def _lost(self, child: _Child) -> None:
        """The writer process went away: start another, and give it the jobs
        the lost one had in hand.

        Whether they were committed before the process died is unknown,
        and needs not be: a job sent again is a replay of its transaction
        id, answered from the store if it was written. A job that has lost
        two writers already fails instead, in case it is what kills them.
        """
        again = []
        for job, future, tries in child.take(child.in_hand):
            if future.done():
                continue
            if self._closed or tries + 1 >= MAX_TRIES:
                future.set_exception(WriterClosedError("the writer process died"))
            else:
                again.append((job, future, tries + 1))
        self._pending[:0] = again
        if again:
            self._dispatch_soon()  # to another writer process, if one is up
        self._background(child.wait())
        if child in self._children and not self._closed:
            self._children.remove(child)
            log.error("writer_process_lost", exit=child.exit_code())
            self._background(self._restart())

    def _fail_pending(self, why: str) -> None:
        pending, self._pending = self._pending, []
        for _, future, _ in pending:
            if not future.done():
                future.set_exception(WriterClosedError(why))

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _restart(self) -> None:
        while not self._closed:
            try:
                await self._spawn()
            except Exception as exc:
                log.error("writer_process_start_failed", error=type(exc).__name__)
                if not self._children:
                    # Nobody can write them for now: answer rather than keep
                    # the callers waiting (their clients retry).
                    self._fail_pending("no writer process could be started")
                await asyncio.sleep(RESTART_DELAY_SECONDS)
                continue
            self._dispatch()
            return

    async def _spawn(self) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "famprov.store.writer_process"],
                stdin=theirs.fileno(),
                stdout=subprocess.DEVNULL,
                # What it needs comes over the socket: no setting, and above
                # all no secret key, in the environment it can be read from.
                env={
                    k: v for k, v in os.environ.items() if not k.startswith("FAMPROV_")
                },
            )
        finally:
            theirs.close()
        _, child = await loop.connect_accepted_socket(
            lambda: _Child(self, process), ours
        )
        child.send(self._config)
        try:
            await asyncio.wait_for(child.ready, START_TIMEOUT_SECONDS)
        except BaseException:
            child.close()
            await child.wait()
            raise
        if self._closed:
            child.close()
            await child.wait()
            return
        self._children.append(child)


class _Child(asyncio.Protocol):
    """The serving process's end of one writer process's socket."""

    def __init__(self, writer: BatchWriter[Any, Any], process: subprocess.Popen[bytes]):
        self._writer = writer
        self._process = process
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        # The jobs sent and not yet answered, oldest first.
        self._in_hand: collections.deque[_Job] = collections.deque()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def in_hand(self) -> int:
        return len(self._in_hand)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are transports without being asyncio's class.
        self._transport = cast(asyncio.Transport, transport)

    def send(self, message: Any) -> None:
        assert self._transport is not None
        self._transport.write(frame(message))

    def send_jobs(self, now: datetime, jobs: list[_Job]) -> None:
        self._in_hand.extend(jobs)
        self.send((now, [job for job, _, _ in jobs]))

    def take(self, count: int) -> list[_Job]:
        """The ``count`` oldest jobs in hand, which leave it."""
        popleft = self._in_hand.popleft
        return [popleft() for _ in range(count)]

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= HEADER:
            size = int.from_bytes(buffer[:HEADER], "big")
            if len(buffer) < HEADER + size:
                return
            message = pickle.loads(buffer[HEADER : HEADER + size])  # noqa: S301 - our own child, on a private socket pair
            del buffer[: HEADER + size]
            self._received(message)

    def _received(self, message: Any) -> None:
        if not self.ready.done():
            kind, detail = message
            if kind == "ready":
                self.ready.set_result(None)
            else:
                self.ready.set_exception(WriterFailedError(detail))
            return
        outcomes, seconds = message
        self._writer._finished(self, outcomes, seconds)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(WriterClosedError("the writer process left"))
        self._writer._lost(self)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def exit_code(self) -> int | None:
        return self._process.poll()

    async def wait(self) -> None:
        """Wait for the process to leave; it does once its socket closes."""
        try:
            await asyncio.wait_for(
                asyncio.to_thread(self._process.wait), STOP_TIMEOUT_SECONDS
            )
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            await asyncio.to_thread(self._process.wait)
