"""Fixtures: a real store on disk and a real server on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from famprov import logs
from famprov.clock import FixedClock
from famprov.config import Settings
from famprov.partners.service import add_partner
from famprov.store import create_schema, open_engine
from support import SALT, LiveServer, Partner


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/famprov.db",
        mail_url=f"file://{tmp_path}/mail",
        public_url="http://famprov.test",
        partner_cache_seconds=0,
        delivery_poll_seconds=0.05,
    )


@pytest.fixture
def env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The same settings as environment variables, for the CLI and subprocesses."""
    values = {
        "FAMPROV_DATABASE_URL": settings.database_url,
        "FAMPROV_MAIL_URL": settings.mail_url,
        "FAMPROV_PUBLIC_URL": settings.public_url,
        "FAMPROV_PARTNER_CACHE_SECONDS": "0",
        "FAMPROV_DELIVERY_POLL_SECONDS": "0.05",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = open_engine(settings.database)
    create_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(datetime(2026, 3, 10, 9, 30, tzinfo=UTC))


@pytest.fixture
def partner(engine: Engine, clock: FixedClock) -> Partner:
    add_partner(engine, clock, "acme", SALT)
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


def pytest_configure(config: pytest.Config) -> None:
    # The in-process servers log as the real one does: through logging, to
    # stderr, where pytest captures it.
    logs.configure("json", "info")
