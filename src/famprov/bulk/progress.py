"""Progress of a run: a rich bar on a terminal, plain periodic lines elsewhere
(a log file, a CI job, a pipe), where a redrawn bar would be noise."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)


async def show(done: Callable[[], int], total: int, out: TextIO, every: float) -> None:
    """Report ``done()`` out of ``total`` until cancelled."""
    if out.isatty():
        await _bar(done, total, out)
    else:
        await _lines(done, total, out, every)


async def _bar(done: Callable[[], int], total: int, out: TextIO) -> None:
    columns = (
        TextColumn("granting"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]} rows/s"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(file=out), transient=False) as bar:
        task = bar.add_task("rows", total=total, rate="-")
        started = time.monotonic()
        try:
            while True:
                await asyncio.sleep(0.1)
                count = done()
                rate = count / max(time.monotonic() - started, 1e-9)
                bar.update(task, completed=count, rate=f"{rate:,.0f}")
        finally:
            bar.update(task, completed=done())


async def _lines(
    done: Callable[[], int], total: int, out: TextIO, every: float
) -> None:
    started = time.monotonic()
    try:
        while True:
            await asyncio.sleep(every)
            out.write(line(done(), total, time.monotonic() - started) + "\n")
            out.flush()
    finally:
        out.write(line(done(), total, time.monotonic() - started) + "\n")
        out.flush()


def line(count: int, total: int, elapsed: float) -> str:
    rate = count / elapsed if elapsed > 0 else 0.0
    share = count / total if total else 1.0
    left = ""
    if rate and count < total:
        left = f", about {(total - count) / rate:,.0f} s left"
    return (
        f"provision-csv: {count:,} of {total:,} rows sent ({share:.0%}), "
        f"{rate:,.0f} rows/s{left}"
    )
