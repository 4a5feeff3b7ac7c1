"""A real SMTP server on loopback (aiosmtpd) that can be told to fail.

``fail_next(n, reply)`` answers the next ``n`` messages with ``reply`` at the
end of DATA (a 4xx for a temporary failure, a 5xx for a permanent one);
``refuse(reply)`` answers every message so until ``accept()``.
"""

from __future__ import annotations

import email
import ssl
import threading
import warnings
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from support import free_port


@dataclass
class Received:
    connection: int
    mail_from: str
    rcpt_tos: list[str]
    mail_options: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        # Headers may hold UTF-8 when the message went with SMTPUTF8.
        parsed = email.message_from_string(
            self.data.decode("utf-8"), policy=policy.default
        )
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class _Handler:
    messages: list[Received] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    refusal: str | None = None
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_EHLO(  # noqa: N802 - the hook's name is aiosmtpd's
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: Any
    ) -> Any:
        # One EHLO per connection, and one more after STARTTLS on the same.
        if not getattr(session, "famprov_counted", False):
            session.famprov_counted = True
            with self.lock:
                self.connections += 1
            session.famprov_connection = self.connections
        session.host_name = hostname
        return responses

    async def handle_DATA(  # noqa: N802 - the hook's name is aiosmtpd's
        self, server: Any, session: Any, envelope: Any
    ) -> str:
        with self.lock:
            if self.failures:
                return self.failures.pop(0)
            if self.refusal is not None:
                return self.refusal
            self.messages.append(
                Received(
                    connection=getattr(session, "famprov_connection", 0),
                    mail_from=envelope.mail_from,
                    rcpt_tos=list(envelope.rcpt_tos),
                    mail_options=list(envelope.mail_options),
                    data=envelope.original_content or envelope.content,
                )
            )
        return "250 2.0.0 OK"


class _Controller(Controller):
    def factory(self) -> Any:
        with warnings.catch_warnings():
            # A login without STARTTLS is what some tests need, on loopback
            # or under implicit TLS; aiosmtpd warns about it for each
            # connection, rightly elsewhere.
            warnings.filterwarnings(
                "ignore", "Requiring AUTH while not requiring TLS", UserWarning
            )
            return super().factory()


class MailServer:
    """An SMTP server in a thread on 127.0.0.1; a context manager."""

    def __init__(
        self,
        *,
        smtputf8: bool = True,
        login: tuple[str, str] | None = None,
        starttls: ssl.SSLContext | None = None,
        implicit_tls: ssl.SSLContext | None = None,
    ) -> None:
        self.port = free_port()
        self.handler = _Handler()
        kwargs: dict[str, Any] = {"enable_SMTPUTF8": smtputf8}
        if login is not None:

            def authenticate(
                server: Any, session: Any, envelope: Any, mechanism: str, data: Any
            ) -> AuthResult:
                ok = (
                    isinstance(data, LoginPassword)
                    and (
                        data.login.decode(),
                        data.password.decode(),
                    )
                    == login
                )
                return AuthResult(success=ok, handled=False)

            kwargs.update(
                authenticator=authenticate,
                auth_required=True,
                # aiosmtpd counts only STARTTLS as TLS for AUTH; under
                # implicit TLS the whole connection is encrypted anyway.
                auth_require_tls=starttls is not None,
            )
        if starttls is not None:
            kwargs.update(tls_context=starttls, require_starttls=True)
        if implicit_tls is not None:
            kwargs.update(ssl_context=implicit_tls)
        self.controller = _Controller(
            self.handler, hostname="127.0.0.1", port=self.port, **kwargs
        )

    def url(self, scheme: str = "smtp", credentials: str = "", query: str = "") -> str:
        at = f"{credentials}@" if credentials else ""
        return f"{scheme}://{at}127.0.0.1:{self.port}{query}"

    @property
    def messages(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.messages)

    @property
    def connections(self) -> int:
        return self.handler.connections

    def fail_next(self, count: int, reply: str) -> None:
        with self.handler.lock:
            self.handler.failures.extend([reply] * count)

    def refuse(self, reply: str) -> None:
        self.handler.refusal = reply

    def accept(self) -> None:
        self.handler.refusal = None

    def __enter__(self) -> MailServer:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()
