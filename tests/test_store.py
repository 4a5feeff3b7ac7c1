"""Migrations and the store's readiness, on both stores."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from famprov.clock import FixedClock
from famprov.config import Settings
from famprov.partners import service as partner_service
from famprov.partners.service import find_partner
from famprov.store.migrate import HEAD, head
from support import FAMPROV, V1_PATH, LiveServer, only, wait_for


def famprov(
    *args: str, settings: Settings, **extra: str
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FAMPROV_DATABASE_URL": settings.database_url}
    if settings.secret_key is not None:
        env["FAMPROV_SECRET_KEY"] = settings.secret_key.get_secret_value()
    env.update(extra)
    return subprocess.run(
        [FAMPROV, *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_upgrade_then_check_agree(settings: Settings) -> None:
    upgraded = famprov("db", "upgrade", settings=settings)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"upgraded from nothing to {head()}" in upgraded.stdout

    again = famprov("db", "upgrade", settings=settings)
    assert again.stdout.strip() == f"database already at {head()}"
    checked = famprov("db", "check", settings=settings)
    assert checked.returncode == 0, checked.stderr
    assert "matching the models" in checked.stdout


def test_a_current_store_is_served_without_loading_alembic(settings: Settings) -> None:
    assert head() == HEAD
    assert famprov("db", "upgrade", settings=settings).returncode == 0
    # What a server does at start, in a fresh interpreter: Alembic is
    # megabytes of every serving process's memory when it loads.
    probe = (
        "import sys\n"
        "import famprov.cli\n"
        "from famprov.config import Settings\n"
        "from famprov.keys import load_keyring\n"
        "from famprov.store import migrate, open_engine\n"
        "settings = Settings()\n"
        "engine = open_engine(settings.database)\n"
        "migrate.prepare(engine, load_keyring(settings))\n"
        "print('alembic' in sys.modules)\n"
    )
    env = {**os.environ, "FAMPROV_DATABASE_URL": settings.database_url}
    if settings.secret_key is not None:
        env["FAMPROV_SECRET_KEY"] = settings.secret_key.get_secret_value()
    loaded = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "False"


def test_check_finds_drift_between_database_and_models(
    settings: Settings, engine
) -> None:
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE licenses ADD COLUMN stray INTEGER"))
    checked = famprov("db", "check", settings=settings)

    assert checked.returncode == 1
    assert "stray" in checked.stderr
    assert "differs from the models" in checked.stderr


def test_check_refuses_a_database_behind_its_migrations(settings: Settings) -> None:
    checked = famprov("db", "check", settings=settings)
    assert checked.returncode == 1
    assert "run `famprov db upgrade` first" in checked.stderr


@only("postgresql")
def test_postgresql_behind_its_migrations_refuses_to_serve(
    settings: Settings,
) -> None:
    result = famprov("serve", "--port", "1", settings=settings)

    assert result.returncode == 1
    assert result.stderr == (
        "famprov: error: the database has no famprov tables: "
        "run `famprov db upgrade` first\n"
    )


@only("sqlite")
def test_embedded_store_upgrades_itself(settings: Settings) -> None:
    listed = famprov("partner", "list", "--json", settings=settings)
    assert listed.returncode == 0, listed.stderr
    assert famprov("db", "check", settings=settings).returncode == 0


@only("sqlite")
def test_embedded_store_refuses_several_serving_processes(settings: Settings) -> None:
    result = famprov("serve", "--workers", "2", settings=settings)
    assert result.returncode == 2
    assert "one serving process" in result.stderr


def test_database_from_a_newer_famprov_is_named_so(settings: Settings, engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    for args in (["db", "upgrade"], ["db", "check"], ["license", "list"]):
        result = famprov(*args, settings=settings)
        assert result.returncode == 1, args
        assert "revision 9999, which this famprov does not know" in result.stderr
        assert len(result.stderr.splitlines()) == 1


def test_revision_refuses_to_write_an_empty_migration(
    settings: Settings, engine
) -> None:
    result = famprov("db", "revision", "nothing", settings=settings)
    assert result.returncode == 1
    assert "no migration to write" in result.stderr


@only("postgresql")
def test_shared_store_hosts_need_a_public_url(settings: Settings, engine) -> None:
    for args in (["serve", "--port", "1"], ["worker"]):
        result = famprov(*args, settings=settings)
        assert result.returncode == 2, args
        assert "set FAMPROV_PUBLIC_URL" in result.stderr


def test_missing_sqlite_folder_is_an_error_not_a_new_store(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/no/such/folder/famprov.db"
    result = subprocess.run(
        [FAMPROV, "license", "list"],
        env={**os.environ, "FAMPROV_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "does not exist" in result.stderr
    assert not (tmp_path / "no").exists()


@only("sqlite")
def test_embedded_store_checkpoints_between_batches(
    settings: Settings, engine, partner
) -> None:
    """The writer checkpoints between batches, SQLite's own automatic
    checkpoints being off in its connection, and the database file takes in
    the grants while the server runs and waits for more (20 grants are too
    few for SQLite's own automatic checkpoint)."""
    database = Path(settings.database.database or "")
    migrated = database.stat().st_size
    with LiveServer(settings, FixedClock(datetime(2026, 3, 10, tzinfo=UTC))) as live:
        with httpx.Client(base_url=live.url, timeout=10) as http:
            for n in range(20):
                email = f"p{n}@example.com"
                answer = http.get(
                    V1_PATH, params=partner.params(transaction_id=str(n), email=email)
                )
                assert answer.status_code == 200
        wait_for(lambda: database.stat().st_size > migrated)


def test_partners_missing_together_are_read_once(
    engine, keyring, partner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a partner's cache entry runs out under a burst, its requests share
    one read of the store instead of each sending its own."""
    reads: list[str] = []

    def counted(engine_: object, keyring_: object, name: str) -> object:
        reads.append(name)
        return find_partner(engine, keyring, name)

    monkeypatch.setattr(partner_service, "find_partner", counted)
    directory = partner_service.PartnerDirectory(engine, keyring, ttl_seconds=60)

    async def burst() -> list[object]:
        return list(
            await asyncio.gather(*(directory.get(partner.name) for _ in range(50)))
        )

    found = asyncio.run(burst())
    assert reads == [partner.name]
    assert {getattr(p, "name", None) for p in found} == {partner.name}
