"""One typed settings object, read from ``FAMPROV_*`` environment variables.

The server and every CLI command build their settings here, so an operator
command sees the same store and mail folder as the server it sits beside.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./famprov.db"
DEFAULT_MAIL_URL = "file://./famprov-mail"


class Settings(BaseSettings):
    """What an operator can set, with the embedded defaults."""

    model_config = SettingsConfigDict(env_prefix="FAMPROV_", extra="ignore")

    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL of the store.",
        repr=False,
    )
    mail_url: str = Field(
        DEFAULT_MAIL_URL,
        description="Where invitations go: file://FOLDER writes one .eml each.",
    )
    mail_from: str = Field(
        "famprov <famprov@localhost>",
        description="Sender of invitations, as a From header value.",
    )
    public_url: str = Field(
        "http://127.0.0.1:8080",
        description="Base of every vault URL, as the invited person reaches it.",
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
    delivery_max_attempts: int = Field(12, ge=1)
    writer_batch_size: int = Field(256, ge=1, le=10_000)
    writers: int = Field(
        0,
        ge=0,
        le=16,
        description="Writer processes per serving process, each with a "
        "connection of its own; 0 picks 1 on SQLite (its only choice) and 2 on "
        "PostgreSQL, so that one batch is written while another commits.",
    )

    @field_validator("writers")
    @classmethod
    def _check_writers(cls, value: int, info: ValidationInfo) -> int:
        database = info.data.get("database_url", DEFAULT_DATABASE_URL)
        if value > 1 and make_url(database).get_backend_name() == "sqlite":
            raise ValueError("above 1 needs PostgreSQL: SQLite takes one writer")
        return value

    @property
    def writer_count(self) -> int:
        if self.writers:
            return self.writers
        return 1 if self.is_embedded else 2

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
        if parts.scheme != "file":
            raise ValueError(
                "only file://FOLDER is supported in this version "
                "(for example file://./famprov-mail)"
            )
        if not (parts.netloc + parts.path):
            raise ValueError("file:// needs a folder")
        return value

    @cached_property
    def database(self) -> URL:
        return make_url(self.database_url)

    @property
    def database_display(self) -> str:
        """The database URL with any password masked, fit for printing."""
        return self.database.render_as_string(hide_password=True)

    @property
    def is_embedded(self) -> bool:
        """True for the SQLite store: one machine, one writing process."""
        return self.database.get_backend_name() == "sqlite"

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
