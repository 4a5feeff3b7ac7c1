"""Sending the rows: N concurrent grants through one `AsyncClient`, each answer
recorded as it arrives, and the summary of the run.

Answers fall in four groups:

- granted: a 200 (a replay of a grant whose answer an earlier run never
  recorded also answers 200, and counts here: the wire cannot tell them
  apart, and either way the person holds the license);
- already granted: the results file of an earlier run records the row as
  granted (it is not sent again), or the server answers 409 naming the order
  number of the live license the person already holds from this partner;
- refused: the server refused the row (400, 401, 403, or a 409 for a
  transaction id already used with other details), grouped by the server's
  reason;
- failed: no answer (the server unreachable or failing after the client's
  retries), a 429 that outlasted the client's patience (it waits as each
  429's Retry-After asks, up to a budget per row), or an answer the importer
  does not expect.

A refusal or failure that every later row would meet too (401, 403, 429
after the waiting, the server unreachable, an unexpected status) stops the
run after the requests in flight: sending thousands of requests bound to
fail helps nobody.
"""

from __future__ import annotations

import asyncio
import re
import signal
from collections import Counter
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Sequence,
)
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from famprov import client as api
from famprov.bulk import progress, results
from famprov.bulk.reading import ImportFile, Problem, Row
from famprov.bulk.results import Result, ResultsLog

_ORDER_NUMBER = re.compile(r"order (\d{8}-\d{4})\b")
_PREFIX = "Invalid request - "


@dataclass(slots=True)
class Summary:
    """What became of the rows of a file."""

    valid: int = 0
    granted: int = 0
    already_granted: int = 0
    skipped: int = 0  # already granted according to an earlier run's results
    refused: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    invalid: Counter[str] = field(default_factory=Counter)
    not_sent: int = 0
    stopped: str | None = None

    @property
    def complete(self) -> bool:
        """Every valid row is granted, now or before."""
        return self.granted + self.already_granted == self.valid

    def lines(self, out: Path) -> list[str]:
        """The summary printed when a run ends."""
        earlier = f" ({self.skipped:,} by an earlier run)" if self.skipped else ""
        lines = [
            f"rows:            {self.valid + self.invalid.total():,}",
            f"granted:         {self.granted:,}",
            f"already granted: {self.already_granted:,}{earlier}",
        ]
        for label, groups in (
            ("refused", self.refused),
            ("failed", self.failed),
            ("invalid", self.invalid),
        ):
            lines.append(f"{label + ':':<17}{groups.total():,}")
            lines += [f"  {n:,}  {reason}" for reason, n in groups.most_common()]
        if self.not_sent:
            lines.append(f"not sent:        {self.not_sent:,}")
        if self.stopped:
            lines.append(f"stopped: {self.stopped}; run again to send the rest")
        lines.append(f"results:         {out}")
        return lines


def classify(row: Row, answer: api.Grant | Exception) -> tuple[Result, str, bool]:
    """The row's result, its group's reason, and whether the run must stop."""

    def result(status: str, message: str, order: str = "", url: str = "") -> Result:
        return Result(
            row.line, row.email, row.transaction_id, status, order, url, message
        )

    if isinstance(answer, api.Grant):
        granted = result(results.GRANTED, "", answer.order_number, answer.vault_url)
        return granted, "", False
    if isinstance(answer, api.Conflict):
        existing = _ORDER_NUMBER.search(answer.message)
        if existing:
            return (
                result(results.ALREADY_GRANTED, answer.message, existing.group(1)),
                "",
                False,
            )
        return result(results.REFUSED, answer.message), _reason(answer.message), False
    if isinstance(answer, api.Unauthorized):
        reason = "unauthorized: wrong partner name or salt, or the partner is disabled"
        return result(results.REFUSED, answer.message), reason, True
    if isinstance(answer, api.QuotaExceeded):
        return result(results.REFUSED, answer.message), _reason(answer.message), True
    if isinstance(answer, api.InvalidRequest):
        return result(results.REFUSED, answer.message), _reason(answer.message), False
    if isinstance(answer, api.RateLimited):
        reason = f"rate limited: {answer.message}; the server asked to wait longer"
        return result(results.FAILED, answer.message), reason, True
    if isinstance(answer, api.ApiError):
        message = f"unexpected answer {answer.status}: {answer.message}"
        return result(results.FAILED, message), message, True
    message = str(answer) or type(answer).__name__
    return result(results.FAILED, message), message, True


def _reason(message: str) -> str:
    return message.removeprefix(_PREFIX)


Grant = Callable[..., Awaitable[api.Grant]]
Connect = Callable[[], api.AsyncClient]


class Importer:
    """Sends the rows, one request in flight per worker.

    Each worker has a client of its own holding one keep-alive connection:
    with one client shared by 32 workers, httpcore's pool spent more of the
    importer's time choosing a connection for each request than sending it
    (measured with cProfile: 40% of the run).
    """

    def __init__(self, connect: Connect, log: ResultsLog, summary: Summary) -> None:
        self.connect = connect
        self.log = log
        self.summary = summary
        self.sent = 0
        self.in_flight = 0
        self.recorded: list[Result] = []
        self._stopping = False
        self._workers: list[asyncio.Task[None]] = []

    def stop(self, reason: str) -> None:
        """Send no further row; the requests in flight finish and are recorded."""
        if not self._stopping:
            self._stopping = True
            self.summary.stopped = reason

    def abandon(self) -> None:
        """Cancel the requests in flight too; their rows are not recorded."""
        self.stop(self.summary.stopped or "interrupted")
        for worker in self._workers:
            worker.cancel()

    async def run(self, rows: Sequence[Row], concurrency: int) -> None:
        queue = iter(rows)
        # Made before the first request, so that an address that cannot work
        # fails the run once, here.
        clients = [self.connect() for _ in range(min(concurrency, len(rows)))]
        try:
            self._workers = [
                asyncio.create_task(self._work(client.grant, queue))
                for client in clients
            ]
            ends = await asyncio.gather(*self._workers, return_exceptions=True)
        finally:
            for client in clients:
                await client.aclose()
        self.summary.not_sent += len(rows) - self.sent
        # A worker cancelled by `abandon` ends with CancelledError, which is
        # no Exception; anything else (the results file unwritable) is raised.
        for end in ends:
            if isinstance(end, Exception):
                raise end

    # TODO: the importer reaches about a third of the server's grant rate on
    # two cores (target 0.8): httpx costs 600 µs or more of CPU a grant, 177
    # of them in its client layer. Meeting the target needs an HTTP engine
    # with a C parser (aiohttp spends 150 µs a request); see docs/bulk.md.
    async def _work(self, grant: Grant, queue: Iterator[Row]) -> None:
        try:
            await self._send(grant, queue)
        except Exception:
            self.stop("error")
            raise

    async def _send(self, grant: Grant, queue: Iterator[Row]) -> None:
        for row in queue:
            if self._stopping:
                return
            self.in_flight += 1
            answer: api.Grant | Exception
            try:
                answer = await grant(
                    transaction_id=row.transaction_id,
                    first_name=row.first_name,
                    last_name=row.last_name,
                    email=row.email,
                )
            except (api.ClientError, OSError) as exc:
                answer = exc
            finally:
                self.in_flight -= 1
            self._record(row, answer)

    def _record(self, row: Row, answer: api.Grant | Exception) -> None:
        result, reason, fatal = classify(row, answer)
        self.log.append(result)
        self.recorded.append(result)
        self.sent += 1
        summary = self.summary
        if result.status == results.GRANTED:
            summary.granted += 1
        elif result.status == results.ALREADY_GRANTED:
            summary.already_granted += 1
        elif result.status == results.REFUSED:
            summary.refused[reason] += 1
        else:
            summary.failed[reason] += 1
        if fatal:
            self.stop(reason)


@dataclass(slots=True)
class Plan:
    """A checked file set against an earlier run's results: what to send."""

    file: ImportFile
    log: ResultsLog
    to_send: list[Row]
    earlier: dict[str, Result]
    summary: Summary

    @classmethod
    def make(cls, file: ImportFile, out: Path) -> Plan:
        """Take the results file (locked until the run ends) and read it."""
        log = ResultsLog(out)
        try:
            earlier = results.read_results(out)
        except BaseException:
            log.close()
            raise
        summary = Summary(valid=len(file.rows))
        to_send = []
        for row in file.rows:
            before = earlier.get(row.transaction_id)
            if before is not None and before.is_done_for(row.email_key):
                summary.already_granted += 1
                summary.skipped += 1
            else:
                to_send.append(row)
        for problem in file.problems:
            summary.invalid[problem.reason] += 1
        return cls(file, log, to_send, earlier, summary)

    def ordered(self, recorded: Iterable[Result]) -> list[Result]:
        """One result per row in the file's order: this run's answer, else
        the earlier run's; then earlier grants of rows no longer in the file,
        which must not be lost."""
        latest = dict(self.earlier)
        kept: list[Result] = []
        for result in recorded:
            before = latest.get(result.transaction_id)
            if (
                before is not None
                and result.status not in results.DONE
                and before.status in results.DONE
                and not before.is_done_for(results.email_key_of(result.email))
            ):
                # The id was granted to another person before: keep that grant.
                kept.append(before)
            latest[result.transaction_id] = result
        lines: list[Result] = []
        for row in self.file.rows:
            found = latest.pop(row.transaction_id, None)
            if found is not None:
                lines.append(_at_line(found, row.line))
        lines.extend(_invalid(problem) for problem in self.file.problems)
        lines.sort(key=lambda result: result.line)
        lines.extend(r for r in latest.values() if r.status in results.DONE)
        return lines + kept


def _at_line(result: Result, line: int) -> Result:
    return result if result.line == line else replace(result, line=line)


def _invalid(problem: Problem) -> Result:
    return Result(
        problem.line,
        problem.email,
        problem.transaction_id,
        results.INVALID,
        message=problem.describe(),
    )


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop where it is installed (uvicorn's standard extra brings
    it on Linux and macOS): it spends about 10% less CPU a grant here."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coroutine)
    else:
        uvloop.run(coroutine)


async def execute(
    plan: Plan,
    connect: Connect,
    concurrency: int,
    *,
    progress_out: TextIO,
    progress_every: float,
) -> None:
    """Send the plan's rows and rewrite the results file, however it ends.

    The first SIGINT (Ctrl-C) or SIGTERM stops sending and waits for the
    requests in flight; a second SIGINT abandons them.
    """
    log = plan.log
    importer = Importer(connect, log, plan.summary)
    loop = asyncio.get_running_loop()

    def interrupted() -> None:
        if importer.summary.stopped is None:
            progress_out.write(
                f"\nprovision-csv: stopping; waiting for {importer.in_flight} "
                "request(s) in flight (Ctrl-C again to abandon them)\n"
            )
            importer.stop("interrupted")
        else:
            importer.abandon()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupted)
    shown = asyncio.create_task(
        progress.show(
            lambda: importer.sent, len(plan.to_send), progress_out, progress_every
        )
        if plan.to_send
        else asyncio.sleep(0)
    )
    try:
        await importer.run(plan.to_send, concurrency)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        shown.cancel()
        await asyncio.gather(shown, return_exceptions=True)
        log.finish(plan.ordered(importer.recorded))
