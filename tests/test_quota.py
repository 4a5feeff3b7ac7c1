"""Partner quotas: a cap on the licenses a partner may be granted.

The quota is the last check (after idempotency and conflicts): at the cap a
new grant answers 403 and makes nothing, a replay still answers its original
200. It holds exactly under concurrency, within and across batches, writer
processes and servers.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import timedelta
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Connection, Engine, func, select, text, update

from famprov import client
from famprov.cli import main
from famprov.clock import FixedClock
from famprov.config import Settings
from famprov.errors import (
    ExistingLicenseError,
    NotFoundError,
    OperatorError,
    QuotaExceededError,
    TransactionConflictError,
)
from famprov.keys import Keyring
from famprov.licenses import fields
from famprov.licenses.numbers import Numbering
from famprov.licenses.plans import DEFAULT_PLAN
from famprov.licenses.recording import Grant, GrantJob, _count_licenses, record
from famprov.partners.service import (
    add_partner,
    find_partner,
    list_partners,
    set_quota,
)
from famprov.store import WRITE, migrate, open_engine
from famprov.store.raw import RawSQL
from famprov.store.schema import licenses, outbox, partners
from famprov.store.writer import StaleReadError
from support import (
    SALT,
    V1_PATH,
    LiveServer,
    Partner,
    ServerProcess,
    only,
    rows,
    wait_for,
)

QUOTA_REACHED = {
    "success": False,
    "message": "Invalid request - Partner license quota reached",
}


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def person(partner: Partner, n: int | str, **extra: str) -> dict[str, str]:
    """A grant for person ``n``, with their own transaction id and email."""
    return partner.params(
        **{"transaction_id": f"t{n}", "email": f"p{n}@example.com", **extra}
    )


async def send_all(
    urls: list[str], grants: list[dict[str, str]]
) -> list[httpx.Response]:
    """Every grant at once, spread over the servers."""
    limits = httpx.Limits(max_connections=len(grants))
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        return await asyncio.gather(
            *(
                http.get(urls[i % len(urls)] + V1_PATH, params=grant)
                for i, grant in enumerate(grants)
            )
        )


def count(engine: Engine, table: Any, partner_name: str | None = None) -> int:
    query = select(func.count()).select_from(table)
    if partner_name is not None:
        query = query.join(partners, partners.c.id == table.c.partner_id).where(
            partners.c.name == partner_name
        )
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def listed(name: str) -> dict[str, Any]:
    result = cli("partner", "list", "--json")
    assert result.exit_code == 0, result.output
    [entry] = [p for p in json.loads(result.stdout) if p["name"] == name]
    return dict(entry)


def test_at_the_cap_a_new_grant_is_403_and_makes_nothing(
    engine: Engine,
    keyring: Keyring,
    clock: FixedClock,
    http: httpx.Client,
    env: dict[str, str],
) -> None:
    add_partner(engine, keyring, clock, "acme", SALT, quota=2)
    acme = Partner("acme", SALT)
    first = http.get(V1_PATH, params=person(acme, 1))
    second = http.get(V1_PATH, params=person(acme, 2))
    assert (first.status_code, second.status_code) == (200, 200)

    refused = http.get(V1_PATH, params=person(acme, 3))
    assert refused.status_code == 403
    assert refused.json() == QUOTA_REACHED
    assert refused.headers["content-type"] == "application/json"
    assert len(refused.headers["x-request-id"]) == 16
    assert count(engine, licenses) == 2
    assert count(engine, outbox) == 2

    # Step 4 comes before step 5: a replay answers its original body, the
    # same transaction id with other details and a second license for a
    # person are the 409s they always are.
    replay = http.get(V1_PATH, params=person(acme, 1))
    assert (replay.status_code, replay.content) == (200, first.content)
    other = http.get(V1_PATH, params=person(acme, 1, first_name="Bea"))
    assert other.status_code == 409
    assert other.json()["message"].endswith("used with different details")
    again = http.get(V1_PATH, params=person(acme, 2, transaction_id="t9"))
    assert again.status_code == 409
    assert second.json()["order_number"] in again.json()["message"]
    assert count(engine, licenses) == 2

    entry = listed("acme")
    assert (entry["licenses"], entry["quota"], entry["remaining"]) == (2, 2, 0)
    metrics = http.get("/metrics").text
    assert 'famprov_grants_total{outcome="quota_exceeded"} 1.0' in metrics


def test_the_client_raises_quota_exceeded(
    engine: Engine, keyring: Keyring, clock: FixedClock, server: LiveServer
) -> None:
    add_partner(engine, keyring, clock, "acme", SALT, quota=0)
    with (
        client.Client(server.url, partner="acme", salt=SALT, retries=0) as api,
        pytest.raises(client.QuotaExceeded) as refused,
    ):
        api.grant(transaction_id="1", first_name="Ann", email="ann@example.com")
    assert refused.value.status == 403
    assert refused.value.message == QUOTA_REACHED["message"]
    assert count(engine, licenses) == 0


def test_revoked_and_expired_licenses_count(
    engine: Engine,
    keyring: Keyring,
    clock: FixedClock,
    http: httpx.Client,
    env: dict[str, str],
) -> None:
    add_partner(engine, keyring, clock, "acme", SALT, quota=2)
    acme = Partner("acme", SALT)
    revoked = http.get(V1_PATH, params=person(acme, 1)).json()["order_number"]
    assert http.get(V1_PATH, params=person(acme, 2)).status_code == 200
    assert cli("license", "revoke", revoked).exit_code == 0

    assert http.get(V1_PATH, params=person(acme, 3)).status_code == 403
    # A year on, both licenses have expired: their people could be granted
    # again, but not beyond the quota; the refusal changes nothing stored.
    clock.set(clock.now() + timedelta(days=366))
    renewal = http.get(V1_PATH, params=person(acme, 2, transaction_id="renew"))
    assert (renewal.status_code, renewal.json()) == (403, QUOTA_REACHED)
    assert sorted(row.status for row in rows(engine, licenses)) == [
        "invited",
        "revoked",
    ]
    assert listed("acme")["remaining"] == 0

    assert cli("partner", "set", "acme", "--quota", "3").exit_code == 0
    renewal = http.get(V1_PATH, params=person(acme, 2, transaction_id="renew"))
    assert renewal.status_code == 200
    statuses = sorted(row.status for row in rows(engine, licenses))
    assert statuses == ["expired", "invited", "revoked"]


def test_a_burst_at_the_cap_grants_exactly_the_quota(
    engine: Engine, keyring: Keyring, clock: FixedClock, server: LiveServer
) -> None:
    """200 distinct grants at once where the quota leaves room for 30, with
    replays of earlier grants and another partner's grants in the same
    batches: exactly 30 more are granted, and only they."""
    add_partner(engine, keyring, clock, "acme", SALT, quota=50)
    add_partner(engine, keyring, clock, "other", SALT)
    acme, other = Partner("acme", SALT), Partner("other", SALT)
    replays = [person(acme, i) for i in range(20)]
    earlier = asyncio.run(send_all([server.url], replays))
    assert [a.status_code for a in earlier] == [200] * 20

    burst = [person(acme, i) for i in range(20, 220)]
    neighbours = [person(other, i) for i in range(60)]
    mixed = []
    for i, grant in enumerate(burst):
        mixed += [grant, *replays[i : i + 1], *neighbours[i : i + 1]]
    answers = dict(
        zip(
            ((g["partner_name"], g["transaction_id"]) for g in mixed),
            asyncio.run(send_all([server.url], mixed)),
            strict=True,
        )
    )
    first = [answers[("acme", g["transaction_id"])] for g in burst]

    assert Counter(a.status_code for a in first) == {200: 30, 403: 170}
    assert all(a.json() == QUOTA_REACHED for a in first if a.status_code == 403)
    for grant, answer in zip(replays, earlier, strict=True):
        replayed = answers[("acme", grant["transaction_id"])]
        assert (replayed.status_code, replayed.content) == (200, answer.content)
    assert {
        answers[("other", g["transaction_id"])].status_code for g in neighbours
    } == {200}
    assert count(engine, licenses, "acme") == 50
    assert count(engine, licenses, "other") == 60
    assert count(engine, outbox) == 110

    # At the cap, each grant of the burst answers as it did: the granted
    # ones their original 200, the refused ones 403.
    again = asyncio.run(send_all([server.url], burst))
    assert [(a.status_code, a.content) for a in again] == [
        (a.status_code, a.content) for a in first
    ]
    assert count(engine, licenses, "acme") == 50
    assert listed_remaining(engine) == {"acme": 0, "other": None}


def listed_remaining(engine: Engine) -> dict[str, int | None]:
    return {p.name: p.remaining for p in list_partners(engine)}


@only("postgresql")
def test_several_servers_and_writers_hold_the_quota_exactly(
    env: dict[str, str], engine: Engine, keyring: Keyring, clock: FixedClock
) -> None:
    add_partner(engine, keyring, clock, "acme", SALT, quota=50)
    acme = Partner("acme", SALT)
    env = {**env, "FAMPROV_WRITERS": "2", "FAMPROV_WRITER_BATCH_SIZE": "8"}
    with ServerProcess(env) as one, ServerProcess(env) as two:
        urls = [one.url, two.url]
        answers = asyncio.run(send_all(urls, [person(acme, i) for i in range(200)]))
        codes = Counter(a.status_code for a in answers)
        granted = [
            person(acme, i) for i, a in enumerate(answers) if a.status_code == 200
        ]
        replays = asyncio.run(send_all(urls, granted))

    assert codes == {200: 50, 403: 150}
    assert [r.content for r in replays] == [
        a.content for a in answers if a.status_code == 200
    ]
    assert count(engine, licenses) == 50
    assert count(engine, outbox) == 50
    assert listed("acme")["licenses"] == 50


def test_within_a_batch_the_quota_runs_out_at_the_same_grant_as_one_by_one(
    engine: Engine, keyring: Keyring, clock: FixedClock
) -> None:
    """The writer's batch answers as if each grant had come alone: once the
    quota runs out, a repeat of a refused grant is refused too, and so is a
    second transaction id for its person, where a granted one's would be a
    replay and a 409."""
    partner = add_partner(engine, keyring, clock, "acme", SALT, quota=3)
    add_partner(engine, keyring, clock, "other", SALT)
    other = find_partner(engine, keyring, "other")
    assert other is not None

    def job(partner_id: int, txid: str, email: str) -> GrantJob:
        who = fields.Person(email, email, False, "Ann", None)
        return GrantJob(partner_id, txid, who, DEFAULT_PLAN)

    jobs = [
        job(partner.id, "a", "a@example.com"),  # granted: 1 of 3
        job(partner.id, "a", "a@example.com"),  # its replay
        job(other.id, "x", "x@example.com"),  # another partner: no quota
        job(partner.id, "b", "b@example.com"),  # granted: 2 of 3
        job(partner.id, "b2", "b@example.com"),  # b holds a license: 409
        job(partner.id, "c", "c@example.com"),  # granted: 3 of 3
        job(partner.id, "d", "d@example.com"),  # over the quota
        job(partner.id, "d", "d@example.com"),  # still over, not a replay
        job(partner.id, "d2", "d@example.com"),  # d holds nothing: over
        job(partner.id, "a", "z@example.com"),  # a's id, other details: 409
        job(other.id, "y", "y@example.com"),  # the other partner, still free
    ]
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        sql = RawSQL.on(conn)
        outcomes = record(sql, jobs, clock.now(), keyring, Numbering.load(sql))

    kinds = [type(outcome) for outcome in outcomes]
    assert kinds == [
        Grant,
        Grant,
        Grant,
        Grant,
        ExistingLicenseError,
        Grant,
        QuotaExceededError,
        QuotaExceededError,
        QuotaExceededError,
        TransactionConflictError,
        Grant,
    ]
    assert outcomes[1] == Grant(outcomes[0].order_number, outcomes[0].vault_token, True)  # type: ignore[union-attr]
    assert count(engine, licenses, "acme") == 3
    assert count(engine, licenses, "other") == 2
    with engine.connect() as conn:
        query = select(partners.c.name, partners.c.licenses_used)
        used = {row.name: row.licenses_used for row in conn.execute(query)}
    assert used == {"acme": 3, "other": 2}


def test_a_count_that_no_longer_fits_the_quota_is_not_written(
    engine: Engine, keyring: Keyring, clock: FixedClock
) -> None:
    """The statement that counts a batch's licenses checks the quota again:
    when another writer took the room since the batch read it, or the
    operator lowered the quota, it changes nothing and says so."""
    partner = add_partner(engine, keyring, clock, "acme", SALT, quota=2)
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        sql = RawSQL.on(conn)
        _count_licenses(sql, Counter({partner.id: 2}))
        with pytest.raises(StaleReadError):
            _count_licenses(sql, Counter({partner.id: 1}))
    with engine.connect() as conn:
        assert conn.execute(select(partners.c.licenses_used)).scalar_one() == 2


@only("postgresql")
def test_a_batch_that_lost_the_race_for_the_last_license_is_refused(
    engine: Engine,
    keyring: Keyring,
    clock: FixedClock,
    server: LiveServer,
    settings: Settings,
) -> None:
    """Another writer holds the partner's row while it takes the last
    license: the server's batch, decided on the count before, waits for it,
    finds the quota full, and is decided again from a fresh read: a 403,
    and nothing written."""
    add_partner(engine, keyring, clock, "acme", SALT, quota=1)
    acme = Partner("acme", SALT)
    other_writer = open_engine(settings.database)
    try:
        with other_writer.connect() as conn:
            # The other writer's transaction locks the partner's row.
            conn.execute(
                update(partners).values(licenses_used=partners.c.licenses_used)
            )

            async def grant_meanwhile() -> httpx.Response:
                async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                    request = asyncio.create_task(
                        http.get(V1_PATH, params=person(acme, 1))
                    )
                    await asyncio.to_thread(wait_for, lambda: waiting_on_a_lock(engine))
                    await asyncio.to_thread(take_the_last_license, conn)
                    return await request

            answer = asyncio.run(grant_meanwhile())
    finally:
        other_writer.dispose()
    assert (answer.status_code, answer.json()) == (403, QUOTA_REACHED)
    assert count(engine, licenses) == 0
    with engine.connect() as conn:
        assert conn.execute(select(partners.c.licenses_used)).scalar_one() == 1


def waiting_on_a_lock(engine: Engine) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = "
                    "'Lock' AND datname = current_database()"
                )
            ).scalar_one()
        )


def take_the_last_license(conn: Connection) -> None:
    """What the other writer commits: the quota's last license counted."""
    conn.execute(update(partners).values(licenses_used=1))
    conn.commit()


def test_quota_commands(
    env: dict[str, str], engine: Engine, http: httpx.Client
) -> None:
    added = cli("partner", "add", "acme", "--salt", SALT, "--quota", "1")
    assert added.exit_code == 0, added.output
    acme = Partner("acme", SALT)
    assert listed("acme") | {"created_at": None} == {
        "name": "acme",
        "enabled": True,
        "created_at": None,
        "licenses": 0,
        "quota": 1,
        "remaining": 1,
        "previous_salt_until": None,
        "rate_limit": "6000/min",
        "rate_limit_is_default": True,
    }
    assert http.get(V1_PATH, params=person(acme, 1)).status_code == 200
    assert http.get(V1_PATH, params=person(acme, 2)).status_code == 403

    raised = cli("partner", "set", "acme", "--quota", "2")
    assert raised.exit_code == 0, raised.output
    assert raised.stdout == (
        "partner acme: quota 2, 1 license(s) granted, 1 remaining\n"
    )
    assert http.get(V1_PATH, params=person(acme, 2)).status_code == 200
    assert http.get(V1_PATH, params=person(acme, 3)).status_code == 403

    table = cli("partner", "list")
    assert table.exit_code == 0
    [line] = [line for line in table.output.splitlines() if line.startswith("acme")]
    assert line.split()[:5] == ["acme", "yes", "2", "2", "0"]

    # Below what was granted: nothing is taken back, nothing more passes.
    lowered = cli("partner", "set", "acme", "--quota", "0")
    assert (
        lowered.stdout == "partner acme: quota 0, 2 license(s) granted, 0 remaining\n"
    )
    assert listed("acme")["remaining"] == 0

    lifted = cli("partner", "set", "acme", "--quota", "none")
    assert lifted.stdout == "partner acme: no quota, 2 license(s) granted\n"
    assert http.get(V1_PATH, params=person(acme, 3)).status_code == 200
    entry = listed("acme")
    assert (entry["licenses"], entry["quota"], entry["remaining"]) == (3, None, None)
    [line] = [
        line for line in cli("partner", "list").output.splitlines() if "acme" in line
    ]
    assert line.split()[:4] == ["acme", "yes", "3", "none"]


def test_quota_commands_refuse_bad_input(env: dict[str, str], engine: Engine) -> None:
    assert cli("partner", "add", "acme", "--salt", SALT).exit_code == 0
    for bad in ("-1", "ten", "1.5", "", "\u0663"):  # an Arabic-Indic three
        for verb in ("set", "add"):
            name = "acme" if verb == "set" else "other"
            result = cli("partner", verb, name, "--quota", bad)
            assert result.exit_code == 2, (verb, bad)
            assert "neither a whole number nor 'none'" in result.output
    nothing = cli("partner", "set", "acme")
    assert nothing.exit_code == 2
    assert "give at least one limit to change: --quota, --rate" in nothing.output
    huge = cli("partner", "set", "acme", "--quota", "9" * 20)
    assert huge.exit_code == 1
    assert huge.output == "famprov: error: quota must be 0 to 2,147,483,647 licenses\n"
    unknown = cli("partner", "set", "nobody", "--quota", "5")
    assert unknown.exit_code == 1
    assert "no partner named 'nobody'" in unknown.output
    assert listed("acme")["quota"] is None
    assert cli("partner", "list", "--json").stdout.count('"name"') == 1


def test_set_quota_of_an_unknown_partner_changes_nothing(
    engine: Engine, keyring: Keyring, clock: FixedClock
) -> None:
    add_partner(engine, keyring, clock, "acme", SALT, quota=4)
    with pytest.raises(NotFoundError):
        set_quota(engine, "nobody", 1)
    with pytest.raises(OperatorError):
        set_quota(engine, "acme", -1)
    with engine.connect() as conn:
        assert conn.execute(select(partners.c.license_quota)).scalar_one() == 4


def test_the_migration_counts_the_licenses_granted_before_it(
    engine: Engine, keyring: Keyring, clock: FixedClock
) -> None:
    partner = add_partner(engine, keyring, clock, "acme", SALT)
    who = [
        fields.Person(f"{n}@example.com", f"{n}@example.com", False, "Ann", None)
        for n in range(3)
    ]
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        sql = RawSQL.on(conn)
        jobs = [GrantJob(partner.id, p.email, p, DEFAULT_PLAN) for p in who]
        record(sql, jobs, clock.now(), keyring, Numbering.load(sql))
    migrate.downgrade(engine, "0003", keyring=keyring)
    assert migrate.current(engine) == "0003"

    migrate.upgrade(engine, keyring=keyring)
    with engine.connect() as conn:
        row = conn.execute(
            select(partners.c.license_quota, partners.c.licenses_used)
        ).one()
    assert tuple(row) == (None, 3)
    assert migrate.differences(engine) == []
