"""Order numbers are the licenses' ids through the store's permutation: the
number finds its license through the id, and the numbers drawn at random
before revision 0007 stay valid and are never given again."""

from __future__ import annotations

import json

import httpx
from click.testing import CliRunner
from sqlalchemy import Connection, Engine, func, insert, select, text, update

from famprov.cli import main
from famprov.clock import FixedClock
from famprov.config import Settings
from famprov.keys import Keyring, token_context
from famprov.licenses.numbers import OrderNumbers
from famprov.store import WRITE
from famprov.store.raw import RawSQL
from famprov.store.schema import legacy_order_numbers, licenses
from support import V1_PATH, LiveServer, Partner


def shown_email(env: dict[str, str], order: str) -> str | None:
    result = CliRunner().invoke(main, ["license", "show", order, "--json"], env=env)
    if result.exit_code != 0:
        assert "no license with order number" in result.output
        return None

    email: str = json.loads(result.stdout)["email"]
    return email


def next_id(conn: Connection) -> int:
    """The id the next writer process gives its first new license: after
    the highest on SQLite; on PostgreSQL, the first of the block its
    ``nextval`` takes."""
    if conn.dialect.name == "sqlite":
        return int(conn.execute(select(func.max(licenses.c.id))).scalar_one()) + 1
    last, step = conn.execute(
        text(
            "SELECT pg_sequence_last_value(seqrelid), seqincrement FROM pg_sequence "
            "WHERE seqrelid = pg_get_serial_sequence('licenses', 'id')::regclass"
        )
    ).one()
    return int(last) + int(step)


def test_each_grant_gets_its_ids_number_and_is_found_by_it(
    http: httpx.Client, partner: Partner, engine: Engine, env: dict[str, str]
) -> None:
    orders = [
        http.get(
            V1_PATH,
            params=partner.params(transaction_id=str(n), email=f"p{n}@example.com"),
        ).json()["order_number"]
        for n in range(5)
    ]
    with engine.connect() as conn:
        numbers = OrderNumbers.load(RawSQL.on(conn))
        stored = conn.execute(
            select(licenses.c.id, licenses.c.order_number, licenses.c.email)
        ).all()
    assert sorted(orders) == sorted(order for _, order, _ in stored)
    # One after the other: on PostgreSQL from the block of ids the writer
    # process took with one ``nextval``.
    ids = sorted(license_id for license_id, _, _ in stored)
    assert ids == list(range(ids[0], ids[0] + 5))
    assert all(numbers.of(license_id) == order for license_id, order, _ in stored)
    for _, order, email in stored:
        assert shown_email(env, order) == email
    # A number of the right shape that no license holds finds nothing,
    # whatever id it leads back to.
    missing = numbers.of(max(license_id for license_id, _, _ in stored) + 1)
    assert shown_email(env, missing) is None


def test_a_number_drawn_before_is_never_given_again(
    settings: Settings,
    clock: FixedClock,
    partner: Partner,
    engine: Engine,
    env: dict[str, str],
    keyring: Keyring,
) -> None:
    with LiveServer(settings, clock) as live:
        httpx.get(live.url + V1_PATH, params=partner.params())
    # The store as migration 0007 leaves it, with a server started after.
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        numbers = OrderNumbers.load(RawSQL.on(conn))
        first, order, sealed = conn.execute(
            select(
                licenses.c.id, licenses.c.order_number, licenses.c.sealed_vault_token
            )
        ).one()
        # The first license as one granted before 0007, whose random number
        # happens to be the one the next id leads to (its token sealed with
        # that number, as it would have been).
        coming = next_id(conn)
        taken = numbers.of(coming)
        token = keyring.open(sealed, token_context(order))
        conn.execute(
            update(licenses)
            .where(licenses.c.id == first)
            .values(
                order_number=taken,
                sealed_vault_token=keyring.seal(token, token_context(taken)),
            )
        )
        conn.execute(
            insert(legacy_order_numbers).values(order_number=taken, license_id=first)
        )

    with LiveServer(settings, clock) as live, httpx.Client(base_url=live.url) as http:
        second = http.get(
            V1_PATH, params=partner.params(transaction_id="2", email="b@example.com")
        )
        # A replay of the first grant still answers with its number.
        replay = http.get(V1_PATH, params=partner.params())
    assert second.status_code == 200
    assert second.json()["order_number"] == numbers.of(coming + 1)
    assert replay.json()["order_number"] == taken
    assert shown_email(env, taken) == "ann@example.com"
    assert shown_email(env, numbers.of(coming + 1)) == "b@example.com"
