"""Fixtures: a real store (SQLite and PostgreSQL) and a real server on loopback.

Every test that takes ``settings`` runs twice, once per store. A PostgreSQL
test gets a schema of its own in the test database, migrated from scratch,
and dropped afterwards.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import redis
from sqlalchemy import Engine, create_engine, text

from famprov import logs
from famprov.clock import FixedClock
from famprov.config import Settings
from famprov.keys import Keyring, load_keyring
from famprov.partners.service import add_partner
from famprov.store import open_engine
from famprov.store.migrate import upgrade
from support import SALT, SECRET_KEY, LiveServer, Partner

pytest_plugins = ["browser"]

POSTGRES_URL = os.environ.get(
    "FAMPROV_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("FAMPROV_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def pytest_configure(config: pytest.Config) -> None:
    # The in-process servers log as the real one does: through logging, to
    # stderr, where pytest captures it.
    logs.configure("json", "info")


@pytest.fixture(scope="session")
def postgres() -> Iterator[Engine]:
    """The test database; skipped when unreachable, except under CI."""
    engine = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        engine.dispose()
        reason = f"PostgreSQL unreachable at {POSTGRES_URL}: {type(exc).__name__}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def redis_server() -> str:
    """The test Redis's URL; skipped when it does not answer, except under CI."""
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        reason = f"Redis unreachable at {REDIS_URL}: {type(exc).__name__}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_server: str) -> Iterator[str]:
    """A key prefix of the test's own in the test Redis; its keys are
    deleted afterwards."""
    prefix = f"famprov-test-{secrets.token_hex(6)}:"
    yield prefix
    client = redis.Redis.from_url(redis_server)
    try:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/famprov.db"
        return
    admin: Engine = request.getfixturevalue("postgres")
    schema = f"test_{secrets.token_hex(6)}"
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    yield f"{POSTGRES_URL}?options={quote(f'-csearch_path={schema}')}"
    with admin.connect() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))


# The suite sends wrong hashes on purpose, thousands of them (schemathesis,
# Hypothesis): the limits on failed authentications are off unless a test
# turns them on (`test_limits.py`). The partner rate keeps its default.
NO_FAILURE_LIMITS = {
    "failed_auth_rate_per_address": "unlimited",
    "failed_auth_rate_per_name": "unlimited",
}


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    # SQLite keeps its key in the key file it makes beside the store, as
    # the embedded default does; PostgreSQL needs the key given.
    embedded = database_url.startswith("sqlite")
    return Settings(
        database_url=database_url,
        secret_key=None if embedded else SECRET_KEY,
        mail_url=f"file://{tmp_path}/mail",
        public_url="http://famprov.test",
        partner_cache_seconds=0,
        delivery_poll_seconds=0.05,
        **NO_FAILURE_LIMITS,
    )


@pytest.fixture
def env(
    settings: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The settings as environment variables, for the CLI and subprocesses,
    on a store that is migrated, as an operator leaves it."""
    values = {
        "FAMPROV_DATABASE_URL": settings.database_url,
        "FAMPROV_MAIL_URL": settings.mail_url,
        "FAMPROV_PUBLIC_URL": settings.public_url,
        "FAMPROV_PARTNER_CACHE_SECONDS": "0",
        "FAMPROV_DELIVERY_POLL_SECONDS": "0.05",
        **{f"FAMPROV_{key.upper()}": value for key, value in NO_FAILURE_LIMITS.items()},
    }
    if settings.secret_key is not None:
        values["FAMPROV_SECRET_KEY"] = settings.secret_key.get_secret_value()
    else:
        monkeypatch.delenv("FAMPROV_SECRET_KEY", raising=False)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = open_engine(settings.database)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def keyring(settings: Settings) -> Keyring:
    """The keys the store's secrets are sealed with (SQLite: its key file)."""
    return load_keyring(settings)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(datetime(2026, 3, 10, 9, 30, tzinfo=UTC))


@pytest.fixture
def partner(engine: Engine, keyring: Keyring, clock: FixedClock) -> Partner:
    add_partner(engine, keyring, clock, "acme", SALT)
    return Partner("acme", SALT)


@pytest.fixture
def server(
    settings: Settings, clock: FixedClock, engine: Engine
) -> Iterator[LiveServer]:
    with LiveServer(settings, clock) as live:
        yield live


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client
