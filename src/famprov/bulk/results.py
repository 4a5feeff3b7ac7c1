"""The results file: one line per row, written as each answer arrives.

During a run each answer is appended as one whole line and flushed, so that a
run stopped at any moment (Ctrl-C, a killed process) leaves every answer it
received on disk; a torn last line, which only a crash can leave, is ignored
when the file is read back. When the run ends, stopped or not, the file is
rewritten in the input's order, one line per row, and swapped in atomically.
"""

from __future__ import annotations

import csv
import fcntl
import io
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

from famprov.bulk.reading import ImportFileError
from famprov.errors import InvalidFieldError
from famprov.licenses import fields

GRANTED = "granted"
ALREADY_GRANTED = "already granted"
REFUSED = "refused"
FAILED = "failed"
INVALID = "invalid"
# Rows with these results are not sent again when the run is repeated.
DONE = frozenset({GRANTED, ALREADY_GRANTED})

COLUMNS = (
    "line",
    "email",
    "transaction_id",
    "status",
    "order_number",
    "vault_url",
    "message",
)
# Spreadsheets open a UTF-8 file as UTF-8 only when it starts with a BOM.
ENCODING = "utf-8-sig"


@dataclass(frozen=True, slots=True)
class Result:
    """What became of one row; ``message`` is the reason or the server's."""

    line: int
    email: str
    transaction_id: str
    status: str
    order_number: str = ""
    vault_url: str = ""
    message: str = ""

    def is_done_for(self, email_key: str) -> bool:
        """True when this result already grants the person ``email_key``."""
        return self.status in DONE and email_key_of(self.email) == email_key

    def __repr__(self) -> str:
        # The vault URL lets its holder claim the license.
        return f"Result(line={self.line}, status={self.status!r})"


def email_key_of(email: str) -> str:
    """The key the server compares emails by; the email itself if invalid."""
    try:
        return fields.normalise_email(email)[1]
    except InvalidFieldError:
        return email


def _line(values: Iterable[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


def _values(result: Result) -> list[str]:
    return [str(value) for value in asdict(result).values()]


def read_results(path: Path) -> dict[str, Result]:
    """The last result recorded for each transaction id, a grant before
    anything else (an invalid row that repeats a granted row's id must not
    hide that grant); empty when the file does not exist yet."""
    try:
        text = path.read_bytes().decode(ENCODING)
    except FileNotFoundError:
        return {}
    except UnicodeDecodeError:
        raise ImportFileError(f"{path} is not a famprov results file") from None
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        return {}
    if tuple(header) != COLUMNS:
        raise ImportFileError(
            f"{path} is not a famprov results file; give another --out"
        )
    found: dict[str, Result] = {}
    for values in reader:
        if len(values) != len(COLUMNS) or not values[0].isdigit():
            raise ImportFileError(f"{path} line {reader.line_num} is damaged")
        result = Result(int(values[0]), *values[1:])
        if not result.transaction_id:
            continue
        kept = found.get(result.transaction_id)
        if kept is None or result.status in DONE or kept.status not in DONE:
            found[result.transaction_id] = result
    return found


class ResultsLog:
    """Appends results as they arrive; `finish` rewrites the file in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fresh = not path.exists() or path.stat().st_size == 0
        # The vault URLs in it let their holders claim the licenses.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            # Held until the file is rewritten: two runs appending to one
            # results file would each rewrite it without the other's answers.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ImportFileError(
                f"{path} is in use by another provision-csv run"
            ) from None
        self._out: TextIO = open(fd, "a", encoding=ENCODING, newline="")  # noqa: SIM115
        if fresh:
            self._out.write(_line(COLUMNS))
            self._out.flush()

    def append(self, result: Result) -> None:
        # One write of a whole line, flushed: the file holds every answer
        # received, whenever the run stops.
        self._out.write(_line(_values(result)))
        self._out.flush()

    def close(self) -> None:
        if not self._out.closed:
            self._out.close()

    def finish(self, ordered: Iterable[Result]) -> None:
        """Replace the log by one line per row, in the given order."""
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w", encoding=ENCODING, newline="") as out:
            out.write(_line(COLUMNS))
            for result in ordered:
                out.write(_line(_values(result)))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.path)
        self.close()
