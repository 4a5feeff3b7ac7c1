"""No oracle: a refusal takes the same work, so the same time, whether the
partner name is unknown, disabled, or known with a wrong or malformed hash.

`test_a_refusal_takes_as_long_whoever_is_named` measures it over HTTP on a
real server: thousands of refusals of each kind, interleaved, with the email
that makes the server hash the most (the longest the request target allows,
holding spaces, so that the ``+`` variant is verified too). The medians may
differ by less than one verification of that email; a path that skipped the
hashing would be two verifications faster.
"""

from __future__ import annotations

import contextlib
import random
import socket
import statistics
import time
import timeit
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import Engine

from famprov.clock import FixedClock
from famprov.keys import Keyring
from famprov.partners import hashing
from famprov.partners.service import (
    add_partner,
    authenticate,
    find_partner,
    generate_salt,
    rotate_salt,
    set_enabled,
)
from support import SALT, ServerProcess, only

ROUNDS = 2_000  # per kind, per attempt
WARMUP = 300
ATTEMPTS = 3
# Spaces, so that both the email and its "+" variant are verified; as long
# as the 8 KiB request target leaves room for (a space is one byte, "+").
EMAIL = "a " * 3_950 + "@example.com"
KINDS = {
    "wrong hash": ("acme", "0" * 64),
    "malformed hash": ("acme", "not-a-hash"),
    "unknown partner": ("nobody-here", "0" * 64),
    "disabled partner": ("gone", "0" * 64),
}


def head(partner_name: str, hash_hex: str) -> bytes:
    query = (
        f"transaction_id=t1&first_name=Ann&email={EMAIL.replace(' ', '+')}"
        f"&hash={hash_hex}&partner_name={partner_name}"
    )
    return f"GET /create-license?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


@contextlib.contextmanager
def connection(port: int) -> Iterator[socket.socket]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        yield sock


def timed(sock: socket.socket, request: bytes) -> float:
    """Send one request; return the microseconds until its whole answer."""
    started = time.perf_counter_ns()
    sock.sendall(request)
    answer = b""
    while not answer.endswith(b"}"):
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        answer += chunk
    elapsed = (time.perf_counter_ns() - started) / 1000
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
    return elapsed


def measure(port: int) -> dict[str, float]:
    """The median time of each kind of refusal, sent in shuffled rounds so
    that the machine's load weighs on every kind alike."""
    requests = {kind: head(*values) for kind, values in KINDS.items()}
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    order = list(KINDS)
    with connection(port) as sock:
        for _ in range(WARMUP):
            timed(sock, requests["wrong hash"])
        for _ in range(ROUNDS):
            random.shuffle(order)
            for kind in order:
                times[kind].append(timed(sock, requests[kind]))
    return {kind: statistics.median(values) for kind, values in times.items()}


def one_verification() -> float:
    """Microseconds this machine takes to verify ``EMAIL``, at best."""
    best = min(
        timeit.repeat(lambda: hashing.compute_hash(EMAIL, SALT), number=200, repeat=5)
    )
    return best / 200 * 1e6


@only("sqlite")  # the store is not on this path: partners come from the cache
@pytest.mark.slow
def test_a_refusal_takes_as_long_whoever_is_named(
    env: dict[str, str],
    engine: Engine,
    keyring: Keyring,
    clock: FixedClock,
    capsys: pytest.CaptureFixture[str],
) -> None:
    add_partner(engine, keyring, clock, "acme", SALT)
    add_partner(engine, keyring, clock, "gone", generate_salt())
    set_enabled(engine, clock, "gone", False)
    bound = one_verification()
    # The server as deployed: partners cached (the default), no delivery.
    served = {**env, "FAMPROV_PARTNER_CACHE_SECONDS": "2"}
    attempt = 0
    with ServerProcess(served, "--no-delivery") as server:
        # A burst of load from elsewhere can skew one attempt; a path that
        # does less work is faster in every attempt.
        while True:
            attempt += 1
            medians = measure(server.port)
            gaps = {
                kind: medians[kind] - medians["wrong hash"]
                for kind in KINDS
                if kind != "wrong hash"
            }
            if attempt == ATTEMPTS or all(abs(g) < bound for g in gaps.values()):
                break
    with capsys.disabled():
        print(
            f"\nno oracle: attempt {attempt}, medians "
            + ", ".join(f"{kind} {us:.1f} us" for kind, us in medians.items())
            + f"; bound {bound:.1f} us (one verification)"
        )
    for kind, gap in gaps.items():
        assert abs(gap) < bound, (kind, gap, medians)


def test_every_refusal_computes_the_same_hashes(
    engine: Engine,
    keyring: Keyring,
    clock: FixedClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The work itself, counted: as many hashes, over as many bytes (for a
    salt famprov generated; one an operator chose may be longer or shorter
    than the dummy by a few SHA-256 blocks, tens of nanoseconds), whether
    the partner is in a salt rotation's overlap or not."""
    add_partner(engine, keyring, clock, "acme", generate_salt())
    add_partner(engine, keyring, clock, "gone", generate_salt())
    set_enabled(engine, clock, "gone", False)
    add_partner(engine, keyring, clock, "rotating", generate_salt())
    rotate_salt(engine, keyring, clock, "rotating", timedelta(days=1))
    kinds = [*KINDS.values(), ("rotating", "0" * 64)]
    computed: list[int] = []
    real = hashing.compute_hash

    def counting(email: str, salt: str) -> str:
        computed.append(len((email + salt).encode()))
        return real(email, salt)

    monkeypatch.setattr(hashing, "compute_hash", counting)
    for email in ("ann@example.com", "ann family@example.com"):
        work = {}
        for name, hash_hex in kinds:
            computed.clear()
            partner = find_partner(engine, keyring, name)
            with pytest.raises(Exception, match="UnAuthorized"):
                authenticate(partner, email, hash_hex, clock.now())
            work[name, hash_hex] = list(computed)
        assert len({tuple(hashed) for hashed in work.values()}) == 1, work
        # The current salt and the previous one, for each email tried.
        assert len(computed) == (4 if " " in email else 2)


def test_the_dummy_salts_are_as_long_as_a_generated_one() -> None:
    assert len(hashing._DUMMY_SALT) == len(generate_salt())
    assert len(hashing._DUMMY_PREVIOUS_SALT) == len(generate_salt())
