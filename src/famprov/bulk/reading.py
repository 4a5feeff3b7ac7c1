"""Reading an HR export: decoding, the delimiter, the columns, each row's checks.

The checks are the server's own (`famprov.licenses.fields`), run on the values
the importer will send, plus a few the server cannot make (a name that is
only the debris of a wrong encoding, the same person twice in one file): a
row this module accepts is a row the server accepts.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from famprov.errors import FamprovError, InvalidFieldError
from famprov.licenses import fields

if TYPE_CHECKING:
    import _csv

FIRST_NAME, LAST_NAME, EMAIL, TRANSACTION_ID = (
    "first_name",
    "last_name",
    "email",
    "transaction_id",
)
REQUIRED_COLUMNS = (FIRST_NAME, EMAIL)

# Header names as HR systems and spreadsheets spell them, compared after
# `_header_key` drops case, spaces and punctuation ("E-mail" is "email").
ALIASES: dict[str, frozenset[str]] = {
    FIRST_NAME: frozenset({"firstname", "givenname", "forename", "first"}),
    LAST_NAME: frozenset({"lastname", "surname", "familyname", "last"}),
    EMAIL: frozenset(
        {"email", "emailaddress", "mail", "workemail", "workemailaddress"}
    ),
    TRANSACTION_ID: frozenset(
        {"transactionid", "employeeid", "employeenumber", "employeeno", "staffid"}
    ),
}

DELIMITERS = (",", ";", "\t")
# Ordinary and no-break spaces, as spreadsheets leave them around values.
_SPACES = " \t\u00a0\u2007\u202f"
_UTF8_BOM = codecs.BOM_UTF8
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
# What a lossy conversion leaves where it could not map a character.
_LOSS_MARKS = frozenset("\ufffd?")


class ImportFileError(FamprovError):
    """The file as a whole cannot be imported; the message says where."""


@dataclass(frozen=True, slots=True)
class Row:
    """A valid row, as it will be sent."""

    line: int
    transaction_id: str
    first_name: str
    last_name: str | None
    email: str
    email_key: str


@dataclass(frozen=True, slots=True)
class Problem:
    """A row that will not be sent: ``reason`` groups it in the summary."""

    line: int
    column: str
    reason: str
    detail: str
    email: str = ""
    transaction_id: str = ""

    def describe(self) -> str:
        return f"{self.column}: {self.detail}"


@dataclass(slots=True)
class ImportFile:
    """Every data row of a file, checked: the valid ones and the problems."""

    columns: dict[str, str]
    delimiter: str
    rows: list[Row] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def derived_transaction_id(partner: str, email_key: str) -> str:
    """A transaction id for a file without one: the same person from the same
    partner always gets the same id, so a rerun is a replay, not a new grant."""
    digest = hashlib.sha256(f"{partner}\n{email_key}".encode()).hexdigest()
    return f"bulk-{digest[:32]}"


def read_file(
    path: Path,
    partner: str,
    *,
    encoding: str = "utf-8",
    delimiter: str | None = None,
) -> ImportFile:
    """Read and check the whole file; raise `ImportFileError` when it cannot
    be imported at all (encoding, quoting, missing columns)."""
    text = decode(path.read_bytes(), encoding)
    sep = delimiter or detect_delimiter(text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=True)
    records = _records(reader)
    try:
        _, header = next(records)
    except StopIteration:
        raise ImportFileError("the file is empty") from None
    columns = match_columns(header)
    result = ImportFile(
        columns={name: header[index] for name, index in columns.items()},
        delimiter=sep,
    )
    checker = _RowChecker(partner, columns)
    for line, cells in records:
        checked = checker.check(line, cells)
        if isinstance(checked, Row):
            result.rows.append(checked)
        else:
            result.problems.append(checked)
    return result


def decode(data: bytes, encoding: str) -> str:
    """Decode strictly; a bad byte is reported with its line and offset."""
    try:
        codec = codecs.lookup(encoding).name
    except LookupError:
        raise ImportFileError(f"unknown encoding {encoding!r}") from None
    start = 0
    if data.startswith(_UTF16_BOMS):
        # Excel's "Unicode text" export: UTF-16 whatever was asked.
        codec = "utf-16"
    elif codec == "utf-8" and data.startswith(_UTF8_BOM):
        start = len(_UTF8_BOM)
    try:
        return data[start:].decode(codec)
    except UnicodeDecodeError as exc:
        raise ImportFileError(_bad_byte(data, start + exc.start, codec)) from None


def _bad_byte(data: bytes, offset: int, codec: str) -> str:
    line = data.count(b"\n", 0, offset) + 1
    column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
    hint = " (an export from Excel? try --encoding cp1252)" if codec == "utf-8" else ""
    return (
        f"line {line}, byte {column} (offset {offset} in the file): "
        f"byte 0x{data[offset]:02X} is not valid {codec}{hint}"
    )


def detect_delimiter(text: str) -> str:
    """The candidate found most often in the header line.

    The header is the one line whose cells are known to hold none of the
    candidates; data cells (a quoted "Lee, Ann", a semicolon in a note) would
    mislead a guess made from them, as `csv.Sniffer`'s is.
    """
    header = text.split("\n", 1)[0]
    counts = {sep: header.count(sep) for sep in DELIMITERS}
    best = max(DELIMITERS, key=lambda sep: counts[sep])
    return best if counts[best] else ","


def _records(reader: _csv.Reader) -> Iterator[tuple[int, list[str]]]:
    """Non-blank records with the line each starts on (a quoted cell may hold
    line breaks, so a record can span lines)."""
    end = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ImportFileError(
                f"line {reader.line_num}: malformed CSV ({exc})"
            ) from None
        start, end = end + 1, reader.line_num
        if any(trim(cell) for cell in cells):
            yield start, cells


def trim(value: str) -> str:
    return value.strip(_SPACES)


def _header_key(name: str) -> str:
    return "".join(c for c in trim(name).casefold() if c.isalnum())


def match_columns(header: list[str]) -> dict[str, int]:
    """Which column holds which field; every required one must be there."""
    found: dict[str, int] = {}
    for index, name in enumerate(header):
        key = _header_key(name)
        for target, aliases in ALIASES.items():
            if key not in aliases:
                continue
            if target in found:
                raise ImportFileError(
                    f"columns {header[found[target]]!r} and {name!r} both look "
                    f"like {target}; keep one"
                )
            found[target] = index
    missing = [name for name in REQUIRED_COLUMNS if name not in found]
    if missing:
        shown = ", ".join(repr(trim(name)) for name in header)
        raise ImportFileError(
            f"missing column(s) {', '.join(missing)}; the header has {shown}"
        )
    return found


class _RowChecker:
    """Checks rows one by one, remembering emails and ids already seen."""

    def __init__(self, partner: str, columns: dict[str, int]) -> None:
        self.partner = partner
        self.columns = columns
        self.emails: dict[str, int] = {}
        self.transaction_ids: dict[str, int] = {}

    def cell(self, cells: list[str], name: str) -> str:
        index = self.columns.get(name)
        if index is None or index >= len(cells):
            return ""
        return trim(cells[index])

    def check(self, line: int, cells: list[str]) -> Row | Problem:
        email = self.cell(cells, EMAIL)
        given_id = self.cell(cells, TRANSACTION_ID)

        def problem(column: str, reason: str, detail: str) -> Problem:
            return Problem(line, column, reason, detail, email, given_id)

        if not email:
            return problem(EMAIL, "no email", "no email")
        try:
            _, email_key, _ = fields.normalise_email(email)
        except InvalidFieldError:
            # The address itself is in the results file, not on stderr, which
            # often ends up in a CI job's log.
            return problem(EMAIL, "invalid email", "invalid email address")
        first = self.cell(cells, FIRST_NAME)
        last = self.cell(cells, LAST_NAME) or None
        if not first:
            return problem(FIRST_NAME, "no first name", "no first name")
        for column, value in ((FIRST_NAME, first), (LAST_NAME, last)):
            if value is not None and (found := name_problem(value)):
                return problem(column, *found)

        if TRANSACTION_ID in self.columns:
            if not given_id:
                return problem(TRANSACTION_ID, "no transaction id", "empty cell")
            transaction_id = given_id
            if found := text_problem(given_id, fields.MAX_TRANSACTION_ID):
                return problem(TRANSACTION_ID, *found)
        else:
            transaction_id = derived_transaction_id(self.partner, email_key)

        if (earlier := self.emails.get(email_key)) is not None:
            return problem(
                EMAIL, "duplicate email", f"the same email as line {earlier}"
            )
        if (earlier := self.transaction_ids.get(transaction_id)) is not None:
            return problem(
                TRANSACTION_ID,
                "duplicate transaction id",
                f"{transaction_id} is already on line {earlier}",
            )
        self.emails[email_key] = line
        self.transaction_ids[transaction_id] = line
        return Row(line, transaction_id, first, last, email, email_key)


def text_problem(value: str, limit: int) -> tuple[str, str] | None:
    """The server's rules for a text field, as a (reason, detail) pair."""
    if fields.has_forbidden(value):
        return "control characters", f"control or invisible characters in {value!r}"
    if len(value) > limit:
        return "too long", f"more than {limit} characters"
    try:
        fields.check_text("value", value, limit)
    except InvalidFieldError as exc:
        # A rule the server gained after this importer was written.
        return "refused by the server's rules", exc.message
    return None


def name_problem(value: str) -> tuple[str, str] | None:
    """What the server checks, and what no name can be: one without a
    letter, or one holding what an encoding conversion leaves behind."""
    if found := text_problem(value, fields.MAX_NAME):
        return found
    if _LOSS_MARKS.intersection(value):
        return (
            "not a name",
            f"{value!r} holds characters lost in an encoding conversion",
        )
    if not any(unicodedata.category(c).startswith("L") for c in value):
        return "not a name", f"{value!r} has no letter"
    return None
