"""The abuse limits: a request rate per partner, failed authentications per
client address and per partner name, answered 429; counted in process or in
a real Redis shared by several servers.

The client address comes from ``X-Forwarded-For``, which uvicorn trusts from
a proxy on 127.0.0.1, as it trusts the tests' own requests.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import http_sf
import httpx
import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import Engine, func, select

from famprov import client as api
from famprov.cli import main
from famprov.clock import FixedClock
from famprov.config import Settings
from famprov.keys import Keyring
from famprov.partners.service import add_partner
from famprov.store.schema import licenses
from famprov.throttle import counters
from famprov.throttle.counters import FAIL, TAKE, MemoryCounters, RedisCounters
from famprov.throttle.rates import Policy, Rate, RateError
from support import (
    SALT,
    V1_PATH,
    LiveServer,
    Partner,
    ServerProcess,
    free_port,
    only,
    wait_for,
)
from test_openapi import check_against_definition

RATE_BODY = {
    "success": False,
    "message": "Too many requests - Partner request rate exceeded",
}
FAILURES_BODY = {
    "success": False,
    "message": "Too many requests - Too many failed authentications",
}
UNAUTHORIZED = {"success": False, "message": "Invalid Hash Value - UnAuthorized"}


def limited(settings: Settings, **changes: str) -> Settings:
    return settings.model_copy(update=changes)


def grant(
    http: httpx.Client,
    partner: Partner,
    n: int,
    *,
    address: str = "192.0.2.1",
    **fields: str,
) -> httpx.Response:
    params = partner.params(
        transaction_id=f"t{n}", email=f"person{n}@example.com", **fields
    )
    return http.get(V1_PATH, params=params, headers={"X-Forwarded-For": address})


def wrong(http: httpx.Client, name: str, address: str) -> httpx.Response:
    return grant(http, Partner(name, "not-the-salt-0123456789"), 0, address=address)


def field(response: httpx.Response, name: str) -> tuple[str, dict[str, Any]]:
    """A RateLimit field, read by an independent Structured Field parser."""
    items = http_sf.parse(response.headers[name].encode(), tltype="list")
    assert len(items) == 1, items
    value, params = items[0]
    # A String, as draft -11 requires, not a Token.
    assert type(value) is str, value
    return value, params


def metric(base_url: str, name: str, labels: str = "") -> float:
    text = httpx.get(base_url + "/metrics").text
    found = re.search(rf"^{name}{re.escape(labels)} (\S+)$", text, re.MULTILINE)
    assert found, (name, labels)
    return float(found.group(1))


def count_licenses(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(licenses)).scalar_one()


# --- Rates and counts, directly ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "count", "seconds", "shown"),
    [
        ("600/min", 600, 60, "600/min"),
        ("20/10min", 20, 600, "20/10min"),
        ("5/10m", 5, 600, "5/10min"),
        (" 100 / s ", 100, 1, "100/s"),
        ("5000/hour", 5000, 3600, "5000/h"),
        ("3/90s", 3, 90, "3/90s"),
        ("7/120seconds", 7, 120, "7/2min"),
        ("1000/d", 1000, 86_400, "1000/d"),
    ],
)
def test_rates_read_and_print_as_operators_write_them(
    text: str, count: int, seconds: int, shown: str
) -> None:
    rate = Rate.parse(text)
    assert rate == Rate(count, seconds)
    assert str(rate) == shown
    assert Rate.parse(shown) == rate
    assert Rate.parse("Unlimited") is None


@pytest.mark.parametrize(
    "text",
    ["", "600", "600/", "600/week", "0/min", "-1/min", "5/0s", "9/8d", "2000001/s"],
)
def test_unreadable_rates_are_refused_with_the_expected_form(text: str) -> None:
    with pytest.raises(RateError, match=r"rate|count|per second"):
        Rate.parse(text)


def test_policy_fields_are_structured_field_lists() -> None:
    policy = Policy("partner", Rate(6000, 60))
    assert http_sf.parse(policy.header, tltype="list") == [
        ("partner", {"q": 6000, "w": 60})
    ]
    assert http_sf.parse(policy.state(5999, 0.01), tltype="list") == [
        ("partner", {"r": 5999, "t": 1})
    ]


class Tick:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_rate_allows_its_burst_then_one_request_per_interval() -> None:
    clock = Tick()
    store = MemoryCounters(clock=clock)
    policy = Policy("partner", Rate(3, 30))

    def take() -> tuple[bool, float, int, float]:
        refused, wait, left, window = store.settle_now([], TAKE, ("k", policy))
        return refused is None, round(wait, 6), left, round(window, 6)

    # Each answer's window: no more than what is left until one more fits.
    burst = [take() for _ in range(3)]
    assert burst == [(True, 0, left, 10) for left in (2, 1, 0)]
    assert take() == (False, 10, 0, 10)
    clock.now += 9.9
    assert take()[0] is False
    clock.now += 0.1
    assert take()[:3] == (True, 0, 0)
    clock.now += 60
    assert take()[:3] == (True, 0, 2)


def test_failures_lock_out_for_one_interval_after_the_burst() -> None:
    clock = Tick()
    store = MemoryCounters(clock=clock)
    policy = Policy("failed-auth-address", Rate(2, 60))
    other = Policy("failed-auth-name", Rate(100, 60))
    checks = [("a", policy), ("n", other)]
    assert store.blocked(checks) is None
    assert store.settle_now(checks, FAIL, None)[0] is None
    assert store.settle_now(checks, FAIL, None)[0] is None
    # Over: refused, and nothing more is counted, for either key.
    refused, wait, _, _ = store.settle_now(checks, FAIL, None)
    assert refused is policy
    assert round(wait, 6) == 30
    assert store.blocked([("b", policy), ("a", policy)]) == (policy, wait)
    assert round(store._tat.times["n"] - clock.now, 6) == 1.2
    # A partner's request is refused alike while the address is over.
    partner = Policy("partner", Rate(10, 1))
    assert store.settle_now(checks, TAKE, ("p", partner))[0] is policy
    assert "p" not in store._tat.times
    clock.now += 30
    assert store.blocked(checks) is None
    assert store.settle_now(checks, TAKE, ("p", partner))[:3] == (None, 0, 9)


def test_in_process_counts_hold_a_bounded_number_of_keys() -> None:
    clock = Tick()
    store = MemoryCounters(max_entries=1000, clock=clock)
    policy = Policy("failed-auth-name", Rate(5, 60))
    store.settle_now([("busy", policy)], FAIL, None)
    for n in range(60_000):
        store.settle_now([(f"sprayed-{n}", policy)], FAIL, None)
        if n % 500 == 0:
            clock.now += 12  # room for one more failure of "busy"
            store.settle_now([("busy", policy)], FAIL, None)  # written lately: kept
        assert len(store) <= 1000
    assert len(store) == 1000
    assert "busy" in store._tat.times
    assert "sprayed-0" not in store._tat.times


# --- Through HTTP, counted in process ---------------------------------------


@pytest.fixture
def acme(engine: Engine, keyring: Keyring, clock: FixedClock) -> Partner:
    add_partner(engine, keyring, clock, "acme", SALT, rate_limit="3/min")
    return Partner("acme", SALT)


def test_a_partner_over_its_rate_gets_429_and_the_rate_limit_fields(
    settings: Settings, engine: Engine, clock: FixedClock, acme: Partner
) -> None:
    with LiveServer(settings, clock) as live, httpx.Client(base_url=live.url) as http:
        answers = [grant(http, acme, n) for n in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        for n, answer in enumerate(answers[:3]):
            assert field(answer, "RateLimit-Policy") == ("partner", {"q": 3, "w": 60})
            name, state = field(answer, "RateLimit")
            assert name == "partner"
            assert state["r"] == 2 - n
            assert 1 <= state["t"] <= 20
            check_against_definition(V1_PATH, 200, answer.json(), answer.headers)

        refused = answers[3]
        assert refused.json() == RATE_BODY
        assert refused.headers["content-type"] == "application/json"
        retry = int(refused.headers["Retry-After"])
        assert 15 <= retry <= 20
        assert field(refused, "RateLimit-Policy") == ("partner", {"q": 3, "w": 60})
        assert field(refused, "RateLimit") == ("partner", {"r": 0, "t": retry})
        check_against_definition(V1_PATH, 429, refused.json(), refused.headers)
        # A replay counts too, and is refused alike: nothing was written.
        assert grant(http, acme, 0).status_code == 429
        assert count_licenses(engine) == 3
        assert metric(live.url, "famprov_rate_limited_total", '{limit="partner"}') == 2
        assert metric(live.url, "famprov_grants_total", '{outcome="partner_rate"}') == 2


def test_the_default_rate_applies_and_unlimited_partners_carry_no_fields(
    settings: Settings, engine: Engine, keyring: Keyring, clock: FixedClock
) -> None:
    add_partner(engine, keyring, clock, "bulk", SALT)
    add_partner(engine, keyring, clock, "free", SALT, rate_limit="unlimited")
    custom = limited(settings, partner_rate="2/min")
    with LiveServer(custom, clock) as live, httpx.Client(base_url=live.url) as http:
        bulk, free = Partner("bulk", SALT), Partner("free", SALT)
        assert [grant(http, bulk, n).status_code for n in range(3)] == [200, 200, 429]
        answers = [grant(http, free, n) for n in range(5)]
        assert [a.status_code for a in answers] == [200] * 5
        assert "RateLimit" not in answers[0].headers
        assert "RateLimit-Policy" not in answers[0].headers


def test_only_authenticated_requests_spend_a_partners_rate(
    settings: Settings, engine: Engine, clock: FixedClock, acme: Partner
) -> None:
    with LiveServer(settings, clock) as live, httpx.Client(base_url=live.url) as http:
        for n in range(10):
            assert wrong(http, "acme", f"198.51.100.{n}").status_code == 401
        assert [grant(http, acme, n).status_code for n in range(3)] == [200] * 3


def test_failed_authentications_lock_out_an_address_right_hash_or_not(
    settings: Settings,
    engine: Engine,
    clock: FixedClock,
    acme: Partner,
    capsys: pytest.CaptureFixture[str],
) -> None:
    custom = limited(
        settings, failed_auth_rate_per_address="3/min", partner_rate="100/min"
    )
    with LiveServer(custom, clock) as live, httpx.Client(base_url=live.url) as http:
        attacker = "203.0.113.7"
        assert [wrong(http, "acme", attacker).status_code for _ in range(3)] == [
            401
        ] * 3
        refused = grant(http, acme, 1, address=attacker)  # the right hash
        assert refused.status_code == 429
        assert refused.json() == FAILURES_BODY
        assert field(refused, "RateLimit-Policy") == (
            "failed-auth-address",
            {"q": 3, "w": 60},
        )
        retry = int(refused.headers["Retry-After"])
        assert 15 <= retry <= 20
        assert field(refused, "RateLimit")[1] == {"r": 0, "t": retry}
        check_against_definition(V1_PATH, 429, refused.json(), refused.headers)
        # Refused before the hash is looked at: a wrong one gets the same.
        assert wrong(http, "ghost", attacker).json() == FAILURES_BODY

        # Another address is not locked out, with any name.
        assert grant(http, acme, 2, address="203.0.113.8").status_code == 200
        # An IPv6 address counts by its /64.
        for host in ("2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::9"):
            assert wrong(http, "acme", host).status_code == 401
        assert grant(http, acme, 3, address="2001:db8:1:2::77").status_code == 429
        assert grant(http, acme, 4, address="2001:db8:1:3::1").status_code == 200
        assert count_licenses(engine) == 2
        assert (
            metric(
                live.url, "famprov_rate_limited_total", '{limit="failed-auth-address"}'
            )
            == 3
        )
    logged = capsys.readouterr().err
    lines = [json.loads(line) for line in logged.splitlines() if line.startswith("{")]
    refusals = [line for line in lines if line.get("outcome") == "failed_auth_limit"]
    assert len(refusals) == 3
    assert {line["limit"] for line in refusals} == {"failed-auth-address"}
    # The request log never holds a client address.
    assert "203.0.113" not in logged
    assert "2001:db8" not in logged


def test_a_name_locks_out_alike_whether_a_partner_has_it_or_not(
    settings: Settings,
    engine: Engine,
    keyring: Keyring,
    clock: FixedClock,
    acme: Partner,
) -> None:
    """The unknown-partner and wrong-hash paths stay indistinguishable: the
    same answers, fields and all, in the same order."""
    custom = limited(
        settings, failed_auth_rate_per_name="3/min", partner_rate="100/min"
    )
    with LiveServer(custom, clock) as live, httpx.Client(base_url=live.url) as http:

        def seen(name: str) -> list[tuple[int, Any, dict[str, str]]]:
            answers = [
                wrong(http, name, f"198.51.100.{n}") for n in range(5)
            ]  # a new address each time: only the name counts here
            return [
                (
                    a.status_code,
                    a.json(),
                    {
                        k: v
                        for k, v in a.headers.items()
                        if k not in ("x-request-id", "date")
                    },
                )
                for a in answers
            ]

        known, unknown = seen("acme"), seen("ghost")
        assert [status for status, _, _ in known] == [401, 401, 401, 429, 429]
        assert [(s, body) for s, body, _ in known] == [
            (s, body) for s, body, _ in unknown
        ]
        assert [set(h) for _, _, h in known] == [set(h) for _, _, h in unknown]
        assert known[1][2] == unknown[1][2]
        assert known[3][1] == FAILURES_BODY
        assert field_of(known[3][2], "ratelimit-policy") == (
            "failed-auth-name",
            {"q": 3, "w": 60},
        )
        # The partner's right hash is refused too while the name is over.
        assert grant(http, acme, 1, address="192.0.2.200").json() == FAILURES_BODY
        # Other names are not affected.
        add_partner(engine, keyring, clock, "globex", SALT)
        assert grant(http, Partner("globex", SALT), 1).status_code == 200
        # Names no partner can have (too long, or of other characters) share
        # one count.
        long_names = ["x" * 65 + "1", "x\x002", "x/3", "x" * 65 + "4"]
        statuses = [wrong(http, name, "192.0.2.9").status_code for name in long_names]
        assert statuses == [401, 401, 401, 429]


def field_of(headers: dict[str, str], name: str) -> tuple[str, dict[str, Any]]:
    items = http_sf.parse(headers[name].encode(), tltype="list")
    value, params = items[0]
    return value, params


def test_sprayed_names_keep_the_counts_bounded(
    settings: Settings,
    engine: Engine,
    clock: FixedClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(counters, "MAX_ENTRIES", 50)
    custom = limited(
        settings,
        failed_auth_rate_per_name="3/min",
        failed_auth_rate_per_address="1000/min",
    )
    with LiveServer(custom, clock) as live, httpx.Client(base_url=live.url) as http:
        for n in range(120):
            assert wrong(http, f"name-{n}", "192.0.2.3").status_code == 401
        assert metric(live.url, "famprov_rate_limit_keys") == 50


# --- The client library and the importer ------------------------------------


def test_the_client_waits_as_retry_after_asks_then_succeeds(
    settings: Settings, engine: Engine, keyring: Keyring, clock: FixedClock
) -> None:
    add_partner(engine, keyring, clock, "acme", SALT, rate_limit="2/2s")
    with LiveServer(settings, clock) as live:
        with api.Client(live.url, partner="acme", salt=SALT) as client:
            started = time.monotonic()
            grants = [
                client.grant(
                    transaction_id=f"c{n}",
                    first_name="Ann",
                    email=f"c{n}@example.com",
                )
                for n in range(4)
            ]
            elapsed = time.monotonic() - started
        assert len({g.order_number for g in grants}) == 4
        # Two at once, then each a second later: at least two Retry-Afters.
        assert elapsed >= 2
        assert metric(live.url, "famprov_rate_limited_total", '{limit="partner"}') >= 2

        async def impatient() -> None:
            async with api.AsyncClient(
                live.url, partner="acme", salt=SALT, max_rate_wait=0.5
            ) as client:
                for n in range(3):
                    await client.grant(
                        transaction_id=f"i{n}",
                        first_name="Ann",
                        email=f"i{n}@example.com",
                    )

        with pytest.raises(api.RateLimited) as refused:
            asyncio.run(impatient())
        assert refused.value.status == 429
        assert refused.value.message == RATE_BODY["message"]
        # What the server asked to wait, for a caller that paces itself.
        assert refused.value.retry_after is not None
        assert 0 < refused.value.retry_after <= 1


def test_retry_after_is_read_as_seconds_or_a_date_and_waited_within_a_budget() -> None:
    def answer(value: str) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": value})

    assert api.retry_after(answer("7")) == 7
    later = email.utils.format_datetime(
        datetime.now(UTC) + timedelta(seconds=30), usegmt=True
    )
    assert 28 <= (api.retry_after(answer(later)) or 0) <= 30
    assert api.retry_after(answer("soon")) is None
    assert api.retry_after(httpx.Response(429)) is None

    attempts = api._Attempts(retries=0, backoff=0.5, max_rate_wait=10)
    first = attempts.rate_wait(4)
    assert first is not None
    assert 4 <= first <= 4.4  # spread by up to a tenth
    assert attempts.rate_wait(0) is not None  # at least a second, never 0
    assert attempts.rate_wait(9) is None  # past what is left of the budget
    # Without a Retry-After, the backoff delays; none left here.
    assert attempts.rate_wait(None) is None


def csv_file(tmp_path: Path, rows: int) -> Path:
    path = tmp_path / "staff.csv"
    lines = ["first_name,last_name,email\n"]
    lines += [f"Person,N{i},p{i}@example.com\n" for i in range(rows)]
    path.write_text("".join(lines))
    return path


def import_csv(url: str, path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(Path(__file__).parent.parent / ".venv/bin/famprov"),
            "provision-csv",
            str(path),
            "--url",
            url,
            "--partner",
            "acme",
            "--salt",
            SALT,
            "--concurrency",
            "8",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@only("sqlite")
def test_a_bulk_import_of_thousands_passes_under_the_default_rate(
    env: dict[str, str],
    engine: Engine,
    keyring: Keyring,
    clock: FixedClock,
    tmp_path: Path,
) -> None:
    add_partner(engine, keyring, clock, "acme", SALT)
    path = csv_file(tmp_path, 3000)
    with ServerProcess(env) as server:
        done = import_csv(server.url, path)
        assert done.returncode == 0, done.stderr
        assert "granted:         3,000" in done.stdout
        assert (
            metric(server.url, "famprov_rate_limited_total", '{limit="partner"}') == 0
        )
    assert count_licenses(engine) == 3000


def test_a_bulk_import_over_a_partners_rate_slows_down_and_completes(
    env: dict[str, str],
    engine: Engine,
    keyring: Keyring,
    clock: FixedClock,
    tmp_path: Path,
) -> None:
    add_partner(engine, keyring, clock, "acme", SALT, rate_limit="40/s")
    path = csv_file(tmp_path, 200)
    with ServerProcess(env) as server:
        started = time.monotonic()
        done = import_csv(server.url, path)
        elapsed = time.monotonic() - started
        assert done.returncode == 0, done.stderr
        assert "granted:         200" in done.stdout
        assert metric(server.url, "famprov_rate_limited_total", '{limit="partner"}') > 0
    # A burst of 40, then 40 a second.
    assert elapsed >= 3
    assert count_licenses(engine) == 200


# --- The operator's commands -------------------------------------------------


def test_partner_rates_are_set_listed_and_checked(env: dict[str, str]) -> None:
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(main, list(args))

    assert run("partner", "add", "acme", "--rate", "600/minute").exit_code == 0
    assert run("partner", "add", "globex").exit_code == 0
    bad = run("partner", "add", "initech", "--rate", "lots")
    assert bad.exit_code == 1
    assert "is not a rate: write N/PERIOD" in bad.output
    listed = run("partner", "list")
    assert re.search(r"acme\s+yes\s+0\s+none\s+600/min\s", listed.output)
    assert re.search(r"globex\s+yes\s+0\s+none\s+6000/min \(default\)", listed.output)

    changed = run("partner", "set", "globex", "--rate", "20/10min")
    assert changed.exit_code == 0
    assert changed.output.endswith("partner globex: rate 20/10min\n")
    assert run("partner", "set", "acme", "--rate", "unlimited").exit_code == 0
    assert run("partner", "set", "nobody", "--rate", "1/s").exit_code == 1
    assert run("partner", "set", "acme").exit_code == 2
    listed = run("partner", "list", "--json")
    rows = {
        row["name"]: row
        for row in json.loads(listed.output[listed.output.index("[") :])
    }
    assert rows["acme"]["rate_limit"] == "unlimited"
    assert rows["globex"]["rate_limit"] == "20/10min"
    assert rows["globex"]["rate_limit_is_default"] is False
    back = run("partner", "set", "globex", "--rate", "default")
    assert back.output.endswith("partner globex: rate 6000/min (default)\n")


def test_an_unreadable_rate_setting_stops_every_command(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAMPROV_PARTNER_RATE", "fast")
    result = CliRunner().invoke(main, ["partner", "list"])
    assert result.exit_code == 2
    assert "FAMPROV_PARTNER_RATE" in result.output
    assert "is not a rate" in result.output


# --- Counted in Redis --------------------------------------------------------


@pytest.fixture
def shared(settings: Settings, redis_server: str, redis_prefix: str) -> Settings:
    return limited(settings, redis_url=redis_server, redis_key_prefix=redis_prefix)


def test_redis_counts_as_the_process_does(redis_server: str, redis_prefix: str) -> None:
    policy = Policy("partner", Rate(3, 30))
    failures = Policy("failed-auth-name", Rate(2, 60))
    checks = [("n", failures)]

    async def scenario() -> None:
        store = RedisCounters(redis_server, redis_prefix)
        try:
            taken = [await store.settle(checks, TAKE, ("k", policy)) for _ in range(4)]
            assert [(r is None, left) for r, _, left, _ in taken] == [
                (True, 2),
                (True, 1),
                (True, 0),
                (False, 0),
            ]
            assert taken[3][0] is policy
            assert 9.9 < taken[3][1] <= 10
            # Redis's clock moves between the calls: a little under 10 s.
            assert all(9.5 < window <= 10 for _, _, _, window in taken[:3])
            assert store.blocked(checks) is None
            for _ in range(2):
                assert (await store.settle(checks, FAIL, None))[0] is None
            refused, wait, _, _ = await store.settle(checks, FAIL, None)
            assert refused is failures
            assert 29.5 < wait <= 30
            # Known now without asking Redis, and refused before the take.
            found = store.blocked([("other", failures), ("n", failures)])
            assert found is not None
            assert found[0] is failures
            refused, _, _, _ = await store.settle(checks, TAKE, ("k2", policy))
            assert refused is failures
            assert store.errors == 0
            assert len(store) == 1  # that refusal, remembered; nothing counted
        finally:
            await store.close()

    asyncio.run(scenario())
    client = redis.Redis.from_url(redis_server)
    try:
        # Each key goes when its count is back to nothing.
        assert 29_000 < client.pttl(redis_prefix + "rl:k") <= 30_000
        assert 59_000 < client.pttl(redis_prefix + "rl:n") <= 60_000
        assert not client.exists(redis_prefix + "rl:k2")
    finally:
        client.close()


def test_a_partner_over_its_rate_is_refused_when_counted_in_redis(
    shared: Settings, engine: Engine, clock: FixedClock, acme: Partner
) -> None:
    with LiveServer(shared, clock) as live, httpx.Client(base_url=live.url) as http:
        answers = [grant(http, acme, n) for n in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert [field(a, "RateLimit")[1]["r"] for a in answers] == [2, 1, 0, 0]
        assert answers[3].json() == RATE_BODY
        assert 15 <= int(answers[3].headers["Retry-After"]) <= 20
        assert metric(live.url, "famprov_rate_limit_store_errors_total") == 0


@only("postgresql")
def test_two_servers_sharing_redis_share_the_counts(
    env: dict[str, str],
    engine: Engine,
    keyring: Keyring,
    clock: FixedClock,
    redis_server: str,
    redis_prefix: str,
) -> None:
    add_partner(engine, keyring, clock, "acme", SALT, rate_limit="4/min")
    acme = Partner("acme", SALT)
    shared_env = {
        **env,
        "FAMPROV_REDIS_URL": redis_server,
        "FAMPROV_REDIS_KEY_PREFIX": redis_prefix,
        "FAMPROV_FAILED_AUTH_RATE_PER_NAME": "3/min",
    }
    with ServerProcess(shared_env) as one, ServerProcess(shared_env) as two:
        with httpx.Client(base_url=one.url) as a, httpx.Client(base_url=two.url) as b:
            # The partner's rate: two grants on each, then both refuse.
            assert [grant(a, acme, n).status_code for n in (1, 2)] == [200, 200]
            assert [grant(b, acme, n).status_code for n in (3, 4)] == [200, 200]
            assert grant(a, acme, 5).status_code == 429
            assert grant(b, acme, 6).status_code == 429
            # Failures for one name: two on one server, one on the other.
            assert wrong(a, "ghost", "192.0.2.1").status_code == 401
            assert wrong(a, "ghost", "192.0.2.2").status_code == 401
            assert wrong(b, "ghost", "192.0.2.3").status_code == 401
            assert wrong(a, "ghost", "192.0.2.4").json() == FAILURES_BODY
            assert wrong(b, "ghost", "192.0.2.5").json() == FAILURES_BODY
        for server in (one, two):
            assert metric(server.url, "famprov_rate_limit_store_errors_total") == 0
            # The name's refusal, remembered; nothing counted in process.
            assert metric(server.url, "famprov_rate_limit_keys") == 1
    assert count_licenses(engine) == 4


# In memory only: nothing written to disk.
REDIS_SERVER = (
    "redis-server",
    "--bind",
    "127.0.0.1",
    "--save",
    "",
    "--appendonly",
    "no",
)


class PrivateRedis:
    """A redis-server of the test's own, to stop and start at will."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [*REDIS_SERVER, "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
        )

        def answers() -> bool:
            try:
                return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
            except redis.RedisError:
                return False

        wait_for(answers, timeout=10)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def private_redis(redis_server: str) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        reason = "redis-server is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    server = PrivateRedis(free_port())
    server.start()
    yield server
    server.stop()


@only("sqlite")
def test_without_redis_each_process_counts_alone_and_recovers(
    settings: Settings,
    engine: Engine,
    clock: FixedClock,
    acme: Partner,
    private_redis: PrivateRedis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    custom = limited(settings, redis_url=private_redis.url)

    def events() -> list[dict[str, Any]]:
        lines = capsys.readouterr().err.splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    with LiveServer(custom, clock) as live, httpx.Client(base_url=live.url) as http:
        assert grant(http, acme, 1).status_code == 200
        private_redis.stop()
        # Redis gone: answered at once, and still limited, in this process.
        started = time.monotonic()
        answers = [grant(http, acme, n).status_code for n in range(2, 7)]
        assert time.monotonic() - started < 5
        assert answers == [200, 200, 200, 429, 429]
        assert metric(live.url, "famprov_rate_limit_store_errors_total") >= 1
        assert metric(live.url, "famprov_rate_limit_keys") == 1
        warnings = [e for e in events() if e["event"] == "rate_limit_store_unavailable"]
        assert len(warnings) == 1
        assert warnings[0]["level"] == "warning"
        assert warnings[0]["error"] == "ConnectionError"

        private_redis.start()  # empty: it remembers nothing
        time.sleep(counters.REDIS_RETRY_SECONDS + 0.1)
        assert grant(http, acme, 7).status_code == 200
        recovered = [(e["event"], e["level"]) for e in events()]
        assert ("rate_limit_store_recovered", "info") in recovered
