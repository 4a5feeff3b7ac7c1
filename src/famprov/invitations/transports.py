"""Where invitations go: named backends behind one small interface.

    file://FOLDER          FolderTransport: one .eml file per invitation
    smtp://, smtps://      SmtpTransport: a mail server, through aiosmtplib

A transport raises `DeliveryError` to say whether a failure is worth
retrying; anything else it raises counts as temporary.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

import aiosmtplib

from famprov.config import Settings, SmtpServer

# Rounds of 10 ms to wait for a closed connection's last words.
CLOSE_WAIT_ROUNDS = 100


class DeliveryError(Exception):
    """A delivery that failed; ``permanent`` when retrying cannot help.

    The text is the mail server's reply or famprov's reason, never a
    credential.
    """

    def __init__(self, reason: str, *, permanent: bool) -> None:
        self.reason = reason
        self.permanent = permanent
        super().__init__(reason)


class Transport(Protocol):
    async def send(self, message: EmailMessage, key: str) -> None:
        """Deliver ``message``; ``key`` names the outbox row it comes from.

        Raise to have the delivery retried later, or `DeliveryError` with
        ``permanent=True`` to have it marked failed.
        """
        ...

    async def close(self) -> None:
        """Let go of any connection; the next send opens a new one."""
        ...


class FolderTransport:
    """Writes each message as ``<key>.eml`` in a folder: the embedded default.

    The file appears whole or not at all (written aside, then renamed), and a
    message whose file exists already is not written again, so a delivery
    retried after a crash leaves exactly one file. Each file holds a working
    vault URL, so only the operator's account may read it (0600, and 0700
    for a folder it makes).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    async def send(self, message: EmailMessage, key: str) -> None:
        try:
            await asyncio.to_thread(self._write, message.as_bytes(), key)
        except OSError as exc:
            # A full disk or a missing permission is the operator's to fix;
            # the invitation waits meanwhile.
            raise DeliveryError(
                f"could not write to {self.folder}: {exc.strerror or exc}",
                permanent=False,
            ) from None

    async def close(self) -> None:
        return None

    def _write(self, data: bytes, key: str) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        final = self.folder / f"{key}.eml"
        if final.exists():
            return
        partial = self.folder / f".{key}.eml.partial"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        with open(os.open(partial, flags, 0o600), "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, final)


def tls_context(ca_file: Path | None, verify: bool) -> ssl.SSLContext:
    """The client's TLS settings: the system's authorities, or the operator's
    own (``FAMPROV_MAIL_TLS_CA_FILE``), or no check at all when the operator
    turned it off (``FAMPROV_MAIL_TLS_VERIFY=false``)."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class SmtpTransport:
    """Sends through one mail server, over one connection kept between
    messages.

    A connection unused for ``idle_seconds`` is closed and opened again
    before the next message rather than trusted: servers drop idle clients
    after a few minutes. A connection that turns out dropped is opened again
    once.
    """

    def __init__(
        self,
        server: SmtpServer,
        context: ssl.SSLContext,
        *,
        timeout: float = 30,
        idle_seconds: float = 60,
    ) -> None:
        self._server = server
        self._context = context
        self._timeout = timeout
        self._idle = idle_seconds
        self._client: aiosmtplib.SMTP | None = None
        self._last_used = 0.0

    async def send(self, message: EmailMessage, key: str) -> None:
        try:
            await self._send(message)
        except DeliveryError:
            raise
        except aiosmtplib.SMTPRecipientsRefused as exc:
            await self._reset()
            raise _refused(exc.recipients[0]) from None
        except aiosmtplib.SMTPAuthenticationError as exc:
            # The operator's credentials, not this invitation, are at fault:
            # once they are fixed, waiting invitations go out on their own.
            await self.close()
            raise DeliveryError(
                f"the mail server refused famprov's login: {exc.code} {exc.message}",
                permanent=False,
            ) from None
        except aiosmtplib.SMTPResponseException as exc:
            await self._reset()
            raise _refused(exc) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            await self.close()
            raise DeliveryError(_describe(exc), permanent=False) from None

    async def _send(self, message: EmailMessage) -> None:
        reused = await self._connected()
        utf8 = any(
            not address.addr_spec.isascii()
            for header in ("From", "To")
            for address in message[header].addresses
        )
        client = self._client
        assert client is not None
        if utf8 and not client.supports_extension("smtputf8"):
            raise DeliveryError(
                "the address needs SMTPUTF8 (a non-ASCII local part), which the "
                "mail server does not offer",
                permanent=True,
            )
        try:
            await client.send_message(message)
        except aiosmtplib.SMTPServerDisconnected:
            if not reused:
                raise
            await self.close()
            await self._connected()
            assert self._client is not None
            await self._client.send_message(message)
        self._last_used = time.monotonic()

    async def _connected(self) -> bool:
        """Make sure a connection is open; True when it is one kept from
        before."""
        if self._client is not None and self._client.is_connected:
            if time.monotonic() - self._last_used < self._idle:
                return True
            await self.close()
        server = self._server
        client = aiosmtplib.SMTP(
            hostname=server.host,
            port=server.port,
            use_tls=server.implicit_tls,
            start_tls=server.starttls,
            tls_context=self._context,
            timeout=self._timeout,
        )
        await client.connect()
        self._client = client
        if server.username is not None and server.password is not None:
            await client.login(server.username, server.password.reveal())
        if client.is_ehlo_or_helo_needed:
            # The server's extensions (SMTPUTF8 among them) are known only
            # after EHLO.
            await client.ehlo()
        self._last_used = time.monotonic()
        return False

    async def _reset(self) -> None:
        """After a refused message, clear the server's transaction so the
        connection can carry the next one."""
        if self._client is None or not self._client.is_connected:
            return
        try:
            await self._client.rset()
        except (aiosmtplib.SMTPException, OSError):
            await self.close()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None or not client.is_connected:
            return
        protocol = client.protocol
        try:
            await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            client.close()
        # Over TLS the goodbye goes on after QUIT's answer; a server shutting
        # down must not close its event loop under it (the protocol lets go
        # of its transport once the connection is really lost).
        for _ in range(CLOSE_WAIT_ROUNDS):
            if protocol is None or protocol.transport is None:
                return
            await asyncio.sleep(0.01)


def _refused(exc: aiosmtplib.SMTPResponseException) -> DeliveryError:
    """A reply code from the server: 5xx is final, 4xx is worth a retry."""
    reply = f"{exc.code} {exc.message}".strip()
    return DeliveryError(f"the mail server answered {reply}", permanent=exc.code >= 500)


def _describe(exc: BaseException) -> str:
    # The error's own text names host and port at most; the password is
    # never part of a connection error.
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]


def from_settings(settings: Settings) -> Transport:
    server = settings.smtp_server
    if server is None:
        return FolderTransport(settings.mail_folder)
    return SmtpTransport(
        server,
        tls_context(settings.mail_tls_ca_file, settings.mail_tls_verify),
        timeout=settings.mail_timeout_seconds,
    )
