"""Many grants at once: one license per transaction id, one invitation each."""

from __future__ import annotations

import asyncio

import httpx
from sqlalchemy import Engine

from famprov.config import Settings
from famprov.store.schema import licenses, outbox
from support import V1_PATH, Partner, mail_files, rows, wait_for


async def _send_all(url: str, batches: list[dict[str, str]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await asyncio.gather(*(client.get(V1_PATH, params=p) for p in batches))


def test_identical_grants_at_once_give_one_license_and_one_invitation(
    server, partner: Partner, engine: Engine, settings: Settings
) -> None:
    answers = asyncio.run(_send_all(server.url, [partner.params()] * 60))

    assert {a.status_code for a in answers} == {200}
    assert len({a.content for a in answers}) == 1
    assert len(rows(engine, licenses)) == 1
    assert len(rows(engine, outbox)) == 1
    wait_for(lambda: mail_files(settings))
    assert len(mail_files(settings)) == 1


def test_distinct_grants_at_once_give_one_license_each(
    server, partner: Partner, engine: Engine, settings: Settings
) -> None:
    grants = [
        partner.params(transaction_id=f"t{i}", email=f"person{i}@example.com")
        for i in range(80)
    ]
    answers = asyncio.run(_send_all(server.url, grants))

    assert [a.status_code for a in answers] == [200] * 80
    assert len({a.json()["order_number"] for a in answers}) == 80
    assert len(rows(engine, licenses)) == 80
    wait_for(lambda: len(mail_files(settings)) == 80)


def test_a_conflict_in_a_batch_does_not_fail_its_neighbours(
    server, partner: Partner, engine: Engine
) -> None:
    grants = [
        partner.params(transaction_id=f"t{i}", email=f"p{i}@example.com")
        for i in range(30)
    ]
    # The same person under a second transaction id, in the same burst.
    grants.insert(15, partner.params(transaction_id="dup", email="p3@example.com"))
    answers = asyncio.run(_send_all(server.url, grants))

    codes = [a.status_code for a in answers]
    assert codes.count(200) == 30
    assert codes.count(409) == 1
    assert len(rows(engine, licenses)) == 30
