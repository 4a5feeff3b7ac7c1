"""Where invitations go: named backends behind one small interface."""

from __future__ import annotations

import asyncio
import os
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

from famprov.config import Settings


class Transport(Protocol):
    async def send(self, message: EmailMessage, key: str) -> None:
        """Deliver ``message``; ``key`` names the outbox row it comes from.

        Raise to have the delivery retried later.
        """
        ...


class FolderTransport:
    """Writes each message as ``<key>.eml`` in a folder: the embedded default.

    The file appears whole or not at all (written aside, then renamed), and a
    message whose file exists already is not written again, so a delivery
    retried after a crash leaves exactly one file.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    async def send(self, message: EmailMessage, key: str) -> None:
        await asyncio.to_thread(self._write, message.as_bytes(), key)

    def _write(self, data: bytes, key: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"{key}.eml"
        if final.exists():
            return
        partial = self.folder / f".{key}.eml.partial"
        with open(partial, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, final)


def from_settings(settings: Settings) -> Transport:
    return FolderTransport(settings.mail_folder)
