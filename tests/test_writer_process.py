"""The writer process: replaced when it dies, gone when its server dies."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx

from support import V1_PATH, LiveServer, Partner, ServerProcess, wait_for


def writer_processes(parent: int) -> list[int]:
    """The writer processes whose parent is ``parent``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == parent and b"famprov.store.writer_process" in command:
            found.append(int(entry.name))
    return found


def test_a_dead_writer_process_is_replaced(
    server: LiveServer, http: httpx.Client, partner: Partner
) -> None:
    first = partner.params(transaction_id="1", email="a@example.com")
    granted = http.get(V1_PATH, params=first)
    assert granted.status_code == 200
    [writer] = writer_processes(os.getpid())

    os.kill(writer, signal.SIGKILL)
    wait_for(lambda: not alive(writer))
    # Sent at once, perhaps before the server has noticed: then to the dead
    # writer first, and to its replacement after.
    second = partner.params(transaction_id="2", email="b@example.com")
    answer = http.get(V1_PATH, params=second)

    assert answer.status_code == 200, answer.text
    [replacement] = writer_processes(os.getpid())
    assert replacement != writer
    # The new writer answers a replay of the first grant as the old one did.
    assert http.get(V1_PATH, params=first).json() == granted.json()


def test_the_writer_process_leaves_with_its_server(
    env: dict[str, str], partner: Partner
) -> None:
    with ServerProcess(env) as served:
        [writer] = wait_for(lambda: writer_processes(served.proc.pid))
        served.kill()
    wait_for(lambda: not alive(writer), timeout=10)


def alive(pid: int) -> bool:
    """Running, not gone and not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_the_writer_process_writes_through_the_driver_alone(
    server: LiveServer, http: httpx.Client, partner: Partner
) -> None:
    # SQLAlchemy would cost the process about 28 MB for the life of the
    # server; its compiled modules show in the process's memory map once
    # imported. The driver's show that it was the one writing.
    assert http.get(V1_PATH, params=partner.params()).status_code == 200
    [writer] = writer_processes(os.getpid())
    mapped = Path(f"/proc/{writer}/maps").read_text()
    assert "/sqlalchemy/" not in mapped
    assert "_sqlite3" in mapped or "psycopg" in mapped
    # A server of this process, which loads SQLAlchemy, for comparison.
    assert "/sqlalchemy/" in Path(f"/proc/{os.getpid()}/maps").read_text()
