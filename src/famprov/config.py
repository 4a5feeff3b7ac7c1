"""One typed settings object, read from ``FAMPROV_*`` environment variables.

The server and every CLI command build their settings here, so an operator
command sees the same store and mail folder as the server it sits beside.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from email.headerregistry import HeaderRegistry
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url

from famprov.keys import SecretKeyError, parse_keys
from famprov.logs import Secret
from famprov.throttle.rates import Rate, RateError

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./famprov.db"
DEFAULT_MAIL_URL = "file://./famprov-mail"
_SMTP_PORTS = {"smtp": 25, "smtps": 465}


@dataclass(frozen=True, slots=True)
class SmtpServer:
    """Where ``smtp://`` and ``smtps://`` mail goes; the password prints as
    ``[secure]``."""

    host: str
    port: int
    implicit_tls: bool
    starttls: bool
    username: str | None
    password: Secret | None


class Settings(BaseSettings):
    """What an operator can set, with the embedded defaults."""

    # A refused value is never echoed: the mail URL may hold a password.
    model_config = SettingsConfigDict(
        env_prefix="FAMPROV_", extra="ignore", hide_input_in_errors=True
    )

    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL of the store.",
        repr=False,
    )
    mail_url: str = Field(
        DEFAULT_MAIL_URL,
        description="Where invitations go: file://FOLDER writes one .eml each; "
        "smtp://[USER:PASSWORD@]HOST[:PORT][?starttls=true] or smtps://... "
        "sends through a mail server.",
        repr=False,
    )
    mail_tls_ca_file: Path | None = Field(
        None,
        description="PEM file of the certificate authorities that sign the "
        "mail server's certificate, instead of the system's.",
    )
    mail_tls_verify: bool = Field(
        True,
        description="Whether the mail server's TLS certificate is checked.",
    )
    mail_timeout_seconds: float = Field(30, gt=0)
    template_folder: Path | None = Field(
        None,
        description="A folder whose templates replace famprov's own, by name.",
    )
    mail_from: str = Field(
        "famprov <famprov@localhost>",
        description="Sender of invitations, as a From header value.",
    )
    public_url: str = Field(
        "http://127.0.0.1:8080",
        description="Base of every vault URL, as the invited person reaches it.",
    )
    secret_key: SecretStr | None = Field(
        None,
        description="The keys that seal salts and vault tokens in the store, "
        "newest first, separated by commas; without it the embedded store "
        "keeps a key file beside its database, and PostgreSQL refuses.",
        repr=False,
    )
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    partner_cache_seconds: float = Field(
        2.0,
        ge=0,
        description="How long a partner's record is reused before it is read "
        "again; a disabled partner is refused at the latest this much later.",
    )
    delivery: bool = Field(
        True,
        description="Whether a serving process also delivers invitations.",
    )
    delivery_poll_seconds: float = Field(1.0, gt=0)
    delivery_lease_seconds: float = Field(
        120,
        gt=0,
        description="How long a claimed invitation is held before another "
        "worker may take it over.",
    )
    delivery_retry_hours: float = Field(
        24,
        gt=0,
        description="How long an invitation that fails temporarily is retried, "
        "from its first failure, before it is marked failed.",
    )
    writer_batch_size: int = Field(256, ge=1, le=10_000)
    writers: int = Field(
        1,
        ge=1,
        le=16,
        description="Writer processes per serving process, each with one batch "
        "in flight on a connection of its own; above 1 needs PostgreSQL.",
    )

    partner_rate: str = Field(
        "6000/min",
        description="Each partner's request rate unless the operator set its "
        "own (famprov partner set NAME --rate): N/PERIOD, e.g. 600/min, or "
        "unlimited. A burst of N is allowed, then N per PERIOD.",
    )
    failed_auth_rate_per_address: str = Field(
        "20/10min",
        description="Failed authentications allowed from one client address "
        "(an IPv6 one by its /64); past it, every request from there answers "
        "429 until it is under the rate again.",
    )
    failed_auth_rate_per_name: str = Field(
        "60/10min",
        description="Failed authentications allowed for one partner name as "
        "sent, whether a partner has it or not; past it, every request naming "
        "it answers 429, right hash or not, until it is under the rate again.",
    )
    redis_url: str | None = Field(
        None,
        description="redis://[:PASSWORD@]HOST[:PORT][/DB] or rediss://...: keep "
        "the abuse limits' counts in Redis, shared by every serving process and "
        "host; unset, each process counts alone.",
        repr=False,
    )
    redis_key_prefix: str = Field(
        "famprov:",
        min_length=1,
        max_length=64,
        description="Prefix of famprov's keys in Redis.",
    )

    @field_validator(
        "partner_rate", "failed_auth_rate_per_address", "failed_auth_rate_per_name"
    )
    @classmethod
    def _check_rate(cls, value: str) -> str:
        try:
            Rate.parse(value)
        except RateError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix") or not (
            parts.netloc or parts.path
        ):
            raise ValueError(
                "must be redis://HOST[:PORT][/DB], rediss://... or unix:///PATH"
            )
        return value

    @field_validator("writers")
    @classmethod
    def _check_writers(cls, value: int, info: ValidationInfo) -> int:
        database = info.data.get("database_url", DEFAULT_DATABASE_URL)
        if value > 1 and make_url(database).get_backend_name() == "sqlite":
            raise ValueError("above 1 needs PostgreSQL: SQLite takes one writer")
        return value

    @field_validator("secret_key")
    @classmethod
    def _check_secret_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                parse_keys(value.get_secret_value(), "the setting")
            except SecretKeyError as exc:
                raise ValueError(exc.message) from None
        return value

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.query or parts.fragment:
            raise ValueError("must not hold a query or a fragment")
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        try:
            url = make_url(value)
        except Exception as exc:
            raise ValueError("is not a SQLAlchemy database URL") from exc
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            raise ValueError("must name a sqlite or postgresql database")
        return value

    @field_validator("mail_url")
    @classmethod
    def _check_mail_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme == "file":
            if not (parts.netloc + parts.path):
                raise ValueError("file:// needs a folder")
            return value
        if parts.scheme in _SMTP_PORTS:
            _smtp_server(parts)
            return value
        raise ValueError(
            "must be file://FOLDER, smtp://HOST[:PORT] or smtps://HOST[:PORT]"
        )

    @field_validator("mail_from")
    @classmethod
    def _check_mail_from(cls, value: str) -> str:
        header = HeaderRegistry()("From", value)
        addresses = getattr(header, "addresses", ())
        if header.defects or len(addresses) != 1:
            raise ValueError(
                "must be one address, optionally with a display name: "
                "'Acme Rewards <rewards@example.com>'"
            )
        return value

    @field_validator("template_folder")
    @classmethod
    def _check_template_folder(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"{value} is not a folder")
        return value

    @cached_property
    def database(self) -> URL:
        return make_url(self.database_url)

    @property
    def partner_rate_limit(self) -> Rate | None:
        return Rate.parse(self.partner_rate)

    @property
    def failed_auth_rate_per_address_limit(self) -> Rate | None:
        return Rate.parse(self.failed_auth_rate_per_address)

    @property
    def failed_auth_rate_per_name_limit(self) -> Rate | None:
        return Rate.parse(self.failed_auth_rate_per_name)

    @property
    def database_display(self) -> str:
        """The database URL with any password masked, fit for printing."""
        return self.database.render_as_string(hide_password=True)

    @property
    def is_embedded(self) -> bool:
        """True for the SQLite store: one machine, one writing process."""
        return self.database.get_backend_name() == "sqlite"

    @property
    def mail_display(self) -> str:
        """The mail URL with any password masked, fit for printing."""
        parts = urlsplit(self.mail_url)
        if parts.password is None:
            return self.mail_url
        netloc = f"{parts.username}:***@{parts.netloc.rpartition('@')[2]}"
        return parts._replace(netloc=netloc).geturl()

    @property
    def smtp_server(self) -> SmtpServer | None:
        """The mail server of an smtp:// or smtps:// mail URL, else None."""
        parts = urlsplit(self.mail_url)
        return _smtp_server(parts) if parts.scheme in _SMTP_PORTS else None

    @property
    def mail_folder(self) -> Path:
        """The folder of the file:// mail transport.

        ``file://./famprov-mail`` is relative to the working folder;
        ``file:///var/mail/famprov`` is absolute.
        """
        parts = urlsplit(self.mail_url)
        if parts.netloc in ("", "localhost"):
            return Path(parts.path)
        return Path(parts.netloc + parts.path)


def _smtp_server(parts: SplitResult) -> SmtpServer:
    """Read an smtp:// or smtps:// URL; raise ValueError naming what is wrong,
    never repeating the password."""
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise ValueError("has a port that is not a number from 1 to 65535") from None
    if not host:
        raise ValueError(f"{parts.scheme}:// needs a host")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = set(query) - {"starttls"}
    if unknown or parts.path not in ("", "/") or parts.fragment:
        raise ValueError("takes no path and no query parameter but starttls")
    flag = query.get("starttls", ["false"])[-1].lower()
    if flag not in ("true", "false"):
        raise ValueError("starttls must be true or false")
    implicit_tls, starttls = parts.scheme == "smtps", flag == "true"
    if implicit_tls and starttls:
        raise ValueError("smtps:// is TLS from the start; starttls is for smtp://")
    if (parts.username is None) != (parts.password is None):
        raise ValueError("needs both a user and a password, or neither")
    plain = not (implicit_tls or starttls)
    if parts.password is not None and plain and not _is_loopback(host):
        raise ValueError(
            "would send the password unencrypted: use smtps:// or ?starttls=true"
        )
    return SmtpServer(
        host=host,
        port=port or (587 if starttls else _SMTP_PORTS[parts.scheme]),
        implicit_tls=implicit_tls,
        starttls=starttls,
        username=unquote(parts.username) if parts.username is not None else None,
        password=(
            Secret(unquote(parts.password)) if parts.password is not None else None
        ),
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
