"""Helpers the tests share: a partner's view, a live server, waiting."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
from sqlalchemy import Engine, Table, select

from famprov.api.app import create_app
from famprov.api.protocol import JsonErrorsProtocol
from famprov.clock import Clock
from famprov.config import Settings
from famprov.keys import key_file
from famprov.partners.hashing import compute_hash

V1_PATH = "/bi_api/v1/services/partner/create-license"
SALT = "s3cr3t-salt-for-tests-0123456789"
# The operator's key where the tests give one (PostgreSQL always needs one).
SECRET_KEY = "Mb6Q4CVXKyNfl9YDjiNyrQyI7NpVFKfikrFYcTnXnPQ"
T = TypeVar("T")


@dataclass
class Partner:
    name: str
    salt: str

    def hash(self, email: str) -> str:
        return compute_hash(email, self.salt)

    def params(self, **fields: str) -> dict[str, str]:
        """A valid grant's parameters, with ``fields`` overriding defaults."""
        values = {
            "transaction_id": "0001",
            "first_name": "Ann",
            "last_name": "Lee",
            "email": "ann@example.com",
            "partner_name": self.name,
        }
        values.update(fields)
        values.setdefault("hash", self.hash(values["email"]))
        return values


class LiveServer:
    """famprov on a real uvicorn in a thread, on a free loopback port."""

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        app = create_app(settings, clock=clock)
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            ws="none",
            http=JsonErrorsProtocol,
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def wait_for(predicate: Callable[[], T], timeout: float = 5.0) -> T:
    """Poll until ``predicate()`` is truthy; return its value or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def mail_files(settings: Settings) -> list[Path]:
    folder = settings.mail_folder
    return sorted(folder.glob("*.eml")) if folder.exists() else []


def vendor_url(base: str, params: dict[str, str], path: str = V1_PATH) -> str:
    """The URL as the vendor's sample builds it: concatenated, not encoded."""
    return base + path + "?" + "&".join(f"{k}={v}" for k, v in params.items())


def rows(engine: Engine, table: Table) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(table)))


FAMPROV = str(Path(sys.executable).with_name("famprov"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


class ServerProcess:
    """``famprov serve`` (or another famprov command) as a child process."""

    def __init__(
        self,
        env: dict[str, str],
        *args: str,
        command: str = "serve",
        log: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = command
        argv = [FAMPROV, command]
        if command == "serve":
            argv += ["--port", str(self.port)]
        self.log = open(log, "ab") if log else None  # noqa: SIM115 - closed in stop
        self.proc = subprocess.Popen(
            [*argv, *args],
            env={**os.environ, **env, "FAMPROV_LOG_FORMAT": "json"},
            stdout=subprocess.DEVNULL,
            stderr=self.log or subprocess.DEVNULL,
        )

    def wait_ready(self, timeout: float = 20) -> ServerProcess:
        if self.command == "serve":
            wait_for(lambda: answers(self.url + "/healthz"), timeout=timeout)
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush, no goodbye."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._close_log()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._close_log()

    def _close_log(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None

    def __enter__(self) -> ServerProcess:
        return self.wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def current_key(settings: Settings) -> str:
    """The key the test's store is sealed with: given, or in its key file."""
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value()
    path = key_file(settings)
    assert path is not None
    return path.read_text().strip()


def only(store: str) -> pytest.MarkDecorator:
    """Run a test on one store only: ``@only("postgresql")``."""
    return pytest.mark.parametrize("database_url", [store], indirect=True)
