"""Many processes on one store: races, delivery workers, and crashes."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, func, select

from famprov.clock import FixedClock
from famprov.config import Settings
from famprov.invitations.delivery import DeliveryWorker
from famprov.invitations.transports import FolderTransport
from famprov.keys import Keyring
from famprov.store.schema import licenses, outbox
from support import (
    V1_PATH,
    LiveServer,
    Partner,
    ServerProcess,
    mail_files,
    only,
    rows,
    wait_for,
)


async def spread(urls: list[str], grants: list[dict[str, str]]) -> list[httpx.Response]:
    """Send every grant at once, alternating between the servers."""
    async with httpx.AsyncClient(timeout=60) as client:
        return await asyncio.gather(
            *(
                client.get(urls[i % len(urls)] + V1_PATH, params=grant)
                for i, grant in enumerate(grants)
            )
        )


def all_sent(engine: Engine) -> bool:
    return all(row.status == "sent" for row in rows(engine, outbox))


@only("postgresql")
def test_two_servers_racing_keep_one_license_per_transaction_id(
    env: dict[str, str], partner: Partner, engine: Engine, settings: Settings
) -> None:
    with ServerProcess(env) as one, ServerProcess(env) as two:
        urls = [one.url, two.url]
        same = asyncio.run(spread(urls, [partner.params()] * 100))
        distinct = asyncio.run(
            spread(
                urls,
                [
                    partner.params(transaction_id=f"d{i}", email=f"d{i}@example.com")
                    for i in range(100)
                ],
            )
        )
        wait_for(lambda: len(mail_files(settings)) == 101 and all_sent(engine), 30)

    assert {r.status_code for r in same} == {200}
    assert len({r.json()["order_number"] for r in same}) == 1
    assert [r.status_code for r in distinct] == [200] * 100
    assert len({r.json()["order_number"] for r in distinct}) == 100
    assert len(rows(engine, licenses)) == 101
    invitations = rows(engine, outbox)
    assert len(invitations) == 101
    # Both servers deliver; no invitation was attempted twice.
    assert {row.attempts for row in invitations} == {1}


@only("postgresql")
def test_serve_with_several_workers(
    env: dict[str, str], partner: Partner, tmp_path: Path
) -> None:
    log = tmp_path / "serve.log"
    with ServerProcess(env, "--workers", "2", log=log) as server:
        grants = [
            partner.params(transaction_id=f"w{i}", email=f"w{i}@example.com")
            for i in range(40)
        ]
        answers = asyncio.run(spread([server.url], grants))
    assert [a.status_code for a in answers] == [200] * 40
    # Without FAMPROV_REDIS_URL each process counts the limits alone: said.
    assert "limits_counted_per_process" in log.read_text()


def test_delivery_hosts_apart_from_api_hosts(
    env: dict[str, str], partner: Partner, engine: Engine, settings: Settings
) -> None:
    with ServerProcess(env, "--no-delivery") as api:
        grants = [
            partner.params(transaction_id=f"h{i}", email=f"h{i}@example.com")
            for i in range(20)
        ]
        assert {a.status_code for a in asyncio.run(spread([api.url], grants))} == {200}
        assert mail_files(settings) == []
        worker = ServerProcess(env, command="worker")
        try:
            wait_for(lambda: len(mail_files(settings)) == 20 and all_sent(engine), 20)
        finally:
            worker.stop()
    assert worker.proc.returncode == 0  # SIGTERM is a clean stop


def test_a_dead_workers_claim_runs_out_and_another_delivers(
    partner: Partner,
    engine: Engine,
    keyring: Keyring,
    settings: Settings,
    clock: FixedClock,
) -> None:
    api_only = settings.model_copy(update={"delivery": False})
    with LiveServer(api_only, clock) as server:
        for i in range(3):
            params = partner.params(transaction_id=f"{i}", email=f"p{i}@example.com")
            assert httpx.get(server.url + V1_PATH, params=params).status_code == 200

    def worker() -> DeliveryWorker:
        return DeliveryWorker(
            engine,
            keyring,
            FolderTransport(settings.mail_folder),
            clock,
            public_url=settings.public_url,
            sender=settings.mail_from,
            lease_seconds=60,
        )

    # A worker claims every row, then dies before sending any.
    claimed = worker()._claim("dead-worker")
    assert len(claimed) == 3

    survivor = worker()
    assert asyncio.run(survivor.deliver_due()) == 0  # the rows are still leased
    clock.set(clock.now() + timedelta(seconds=61))
    assert asyncio.run(survivor.deliver_due()) == 3
    assert len(mail_files(settings)) == 3
    assert {(row.status, row.attempts) for row in rows(engine, outbox)} == {("sent", 2)}


async def _hammer(
    url: str, partner: Partner, prefix: str, kill, seconds: float
) -> tuple[int, dict[str, str]]:
    """Send unique grants from 16 connections until the server dies."""
    sent = 0
    acked: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:

        async def one_connection(lane: int) -> None:
            nonlocal sent
            n = 0
            while True:
                n += 1
                txid = f"{prefix}{lane}-{n}"
                params = partner.params(
                    transaction_id=txid, email=f"{txid}@example.com"
                )
                sent += 1
                try:
                    response = await client.get(V1_PATH, params=params)
                except httpx.TransportError:
                    return
                if response.status_code == 200:
                    acked[txid] = response.json()["order_number"]

        async def killer() -> None:
            await asyncio.sleep(seconds)
            await asyncio.to_thread(kill)

        await asyncio.gather(killer(), *(one_connection(i) for i in range(16)))
    return sent, acked


def test_sigkill_under_load_loses_no_acknowledged_grant(
    env: dict[str, str],
    partner: Partner,
    engine: Engine,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    # The killed server's claims on invitations run out fast, as they would
    # after the default lease on a real host.
    env = {**env, "FAMPROV_DELIVERY_LEASE_SECONDS": "1"}
    iterations, sent, acked = 4, 0, {}
    rng = random.Random()
    for i in range(iterations):
        server = ServerProcess(env).wait_ready()
        n, got = asyncio.run(
            _hammer(server.url, partner, f"k{i}-", server.kill, rng.uniform(0.3, 1.2))
        )
        sent += n
        acked.update(got)

    with ServerProcess(env):
        wait_for(lambda: all_sent(engine), timeout=60)

    stored = {row.transaction_id: row.order_number for row in rows(engine, licenses)}
    lost = [txid for txid, order in acked.items() if stored.get(txid) != order]
    with engine.connect() as conn:
        doubled = conn.execute(
            select(licenses.c.transaction_id)
            .group_by(licenses.c.partner_id, licenses.c.transaction_id)
            .having(func.count() > 1)
        ).all()
    per_order = Counter(
        path.name.split("-", 1)[1][:13] for path in mail_files(settings)
    )
    undelivered = [order for order in stored.values() if per_order[order] == 0]
    duplicated = sum(count - 1 for count in per_order.values() if count > 1)

    with capsys.disabled():
        print(
            f"\ncrash test [{settings.database.get_backend_name()}]: "
            f"iterations={iterations} sent={sent} acknowledged={len(acked)} "
            f"stored={len(stored)} lost={len(lost)} "
            f"duplicated_licenses={len(doubled)} "
            f"undelivered_invitations={len(undelivered)} "
            f"duplicated_invitations={duplicated}"
        )
    assert len(acked) > 0
    assert lost == []
    assert doubled == []
    assert undelivered == []
    assert duplicated == 0
