"""Order numbers: each license's id, put through a keyed permutation.

SPEC.md wants order numbers unique across the service and not sequential.
Drawn at random, as they were until revision 0007, they needed a unique
index, and a random key sends each new entry of an index to a page of its
own: every grant of a batch wrote a page of that index, the larger part of
what the embedded store wrote per batch (docs/performance.md).

So a license's order number is its id (unique already, and growing, so
cheap to index) through a permutation of the twelve-digit numbers: a
ten-round Feistel network over two halves of six digits, whose round
function is keyed BLAKE2b, in the manner of NIST's FF1. Distinct ids give
distinct numbers, so no index of numbers is needed to keep them unique;
without the key, consecutive grants give numbers that look drawn at random;
and the number leads back to the id, so a license is found by its number
through its primary key (`famprov.licenses.records.with_order_number`).

The key is the store's own, made with it (`store_keys`), and kept in plain
text: it hides from partners how many licenses the store holds, which anyone
who can read the store sees anyway. The numbers drawn at random before
revision 0007 stay valid in `legacy_order_numbers`; a new number that
happens to equal one of them is skipped (`Numbering.reserve`).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from typing import Any

from famprov.store.raw import RawSQL

KEY_NAME = "order_numbers"
ROUNDS = 10
HALF = 10**6  # each half of the Feistel network: six of the twelve digits
# The highest id there can be: licenses.id is an INTEGER, 32 bits on
# PostgreSQL. Most numbers lead back to ids beyond it, which no license has.
MAX_ID = 2**31 - 1
# The step of PostgreSQL's sequence of license ids (migration 0007): each
# writer process takes this many ids at a time.
ID_BLOCK = 1000


def new_key() -> str:
    """A store's permutation key, as `store_keys` keeps it."""
    return secrets.token_hex(32)


class OrderNumbers:
    """The permutation between license ids and order numbers of one store."""

    __slots__ = ("_keyed",)

    def __init__(self, key: str) -> None:
        self._keyed = hashlib.blake2b(key=bytes.fromhex(key), digest_size=8)

    def __repr__(self) -> str:
        return "OrderNumbers(<key hidden>)"

    @classmethod
    def load(cls, sql: RawSQL) -> OrderNumbers:
        """The store's permutation."""
        (key,) = sql.execute(
            "SELECT value FROM store_keys WHERE name = ?", (KEY_NAME,)
        ).fetchone()
        return cls(key)

    def _round(self, number: int, half: int) -> int:
        keyed = self._keyed.copy()
        keyed.update(bytes((number,)) + half.to_bytes(4, "big"))
        return int.from_bytes(keyed.digest(), "big") % HALF

    def of(self, license_id: int) -> str:
        """The order number of a license: ``12345678-1234``."""
        left, right = divmod(license_id, HALF)
        if not 0 <= left < HALF:
            raise ValueError("license ids run out at 10**12")
        for number in range(ROUNDS):
            left, right = right, (left + self._round(number, right)) % HALF
        digits = f"{left:06d}{right:06d}"
        return f"{digits[:8]}-{digits[8:]}"

    def license_id(self, order_number: str) -> int | None:
        """The id whose order number this is, if it is shaped as one (the
        license may not exist, or the number may be one of before 0007)."""
        digits = order_number[:8] + order_number[9:]
        shaped = len(order_number) == 13 and order_number[8] == "-"
        if not (shaped and digits.isascii() and digits.isdigit()):
            return None
        left, right = divmod(int(digits), HALF)
        for number in reversed(range(ROUNDS)):
            left, right = (right - self._round(number, left)) % HALF, left
        return left * HALF + right


class Numbering:
    """How the writer numbers new licenses: the store's permutation, and
    what it reads once, at its first batch, to reserve ids cheaply.

    Whether there are numbers of before 0007 cannot change while a server
    runs: only migration 0007 writes them, and a store behind its migrations
    is not served.
    """

    def __init__(
        self, numbers: OrderNumbers, sequence: tuple[str, int] | None, legacy: bool
    ):
        self._numbers = numbers
        # PostgreSQL's sequence of license ids, and its step: each value it
        # gives is the first of a block of ids that this process alone uses.
        self._sequence = sequence
        self._block: list[int] = []
        self._legacy = legacy

    @classmethod
    def load(cls, sql: RawSQL) -> Numbering:
        sequence = None
        if not sql.is_sqlite:
            sequence = sql.execute(
                "SELECT seqrelid::regclass::text, seqincrement FROM pg_sequence "
                "WHERE seqrelid = pg_get_serial_sequence('licenses', 'id')::regclass"
            ).fetchone()
        (legacy,) = sql.execute(
            "SELECT EXISTS (SELECT 1 FROM legacy_order_numbers)"
        ).fetchone()
        return cls(OrderNumbers.load(sql), sequence, bool(legacy))

    def reserve(self, sql: RawSQL, count: int) -> list[tuple[int, str]]:
        """``count`` fresh (license id, order number) pairs, in the writer's
        transaction.

        On SQLite, whose one writer holds the store, the ids after the
        highest. On PostgreSQL, from a block of the ids' sequence, which
        steps by `ID_BLOCK` (migration 0007): one ``nextval`` for many
        batches, and no other writer ever gets an id of the block; there the
        ids of a batch that rolls back, of jobs that turn out to be replays,
        and of a block a process leaves unfinished are skipped, and the gaps
        never show, numbers being permuted. An id whose number a license of
        before 0007 holds is passed over.
        """
        fresh: list[tuple[int, str]] = []
        after = 0
        while len(fresh) < count:
            ids = self._next_ids(sql, count - len(fresh), after)
            after = ids[-1]
            pairs = [(license_id, self._numbers.of(license_id)) for license_id in ids]
            if self._legacy:
                taken = _legacy_among(sql, [number for _, number in pairs])
                pairs = [pair for pair in pairs if pair[1] not in taken]
            fresh += pairs
        return fresh

    def _next_ids(self, sql: RawSQL, count: int, after: int) -> list[int]:
        if self._sequence is None:
            (highest,) = sql.execute(
                "SELECT coalesce(max(id), 0) FROM licenses"
            ).fetchone()
            start = max(highest, after) + 1
            return list(range(start, start + count))
        name, step = self._sequence
        while len(self._block) < count:
            (start,) = sql.execute("SELECT nextval(?::regclass)", (name,)).fetchone()
            self._block += range(start, start + step)
        ids, self._block = self._block[:count], self._block[count:]
        return ids


def _legacy_among(sql: RawSQL, candidates: Sequence[str]) -> set[Any]:
    test = sql.any_of(sorted(candidates))
    statement = (
        f"SELECT order_number FROM legacy_order_numbers WHERE order_number {test.test}"  # noqa: S608 - placeholders only
    )
    return {row[0] for row in sql.execute(statement, test.params)}
