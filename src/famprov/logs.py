"""Structured logs: one event per line, JSON when not on a terminal.

Every line written while a request is served carries its request id. Secrets
never reach a log; emails only through `redact_email`.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any, Literal

import structlog

log = structlog.get_logger("famprov")

# The fields every line written while serving one request carries: its
# request id, and the partner once known. One dict per request, set once and
# then added to, costs less than a context variable per field.
_request: ContextVar[dict[str, Any] | None] = ContextVar(
    "famprov_request", default=None
)


def start_request(request_id: str) -> None:
    """Begin a request's context; the current task's lines carry it."""
    _request.set({"request_id": request_id})


def note(**fields: Any) -> None:
    """Add fields to every further line of the current request."""
    context = _request.get()
    if context is not None:
        context.update(fields)


def _merge_request(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    context = _request.get()
    if context:
        for key, value in context.items():
            event.setdefault(key, value)
    return event


class Secret:
    """A string that prints as ``[secure]`` in any repr, str or log."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('[secure]')"

    def __str__(self) -> str:
        return "[secure]"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


# An address as a mail server's reply may quote it: enough to find and
# redact, not to validate.
_ADDRESS = re.compile(r"[^\s<>@,;:\"'()\[\]]+@[^\s<>@,;:\"'()\[\]]+")


def redact_emails(text: str) -> str:
    """``text`` with every address in it redacted, for a server's reply."""
    return _ADDRESS.sub(lambda found: redact_email(found.group()), text)


def redact_email(email: str) -> str:
    """Return ``a***@example.com`` for ``ann@example.com``."""
    local, at, domain = email.rpartition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"


class _Stderr:
    """Whatever ``sys.stderr`` is when a line is written (tests swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _add_logger_name(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    event.setdefault("logger", "famprov")
    return event


_format: list[Literal["json", "console"]] = ["json"]


def current_format() -> Literal["json", "console"]:
    """The format `configure` chose, for a helper process writing to the same
    stderr."""
    return _format[0]


def configure(
    fmt: Literal["auto", "json", "console"] = "auto", level: str = "info"
) -> None:
    """Route structlog and the standard library's logging to stderr."""
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    _format[0] = fmt
    shared: list[Any] = [
        _merge_request,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    # famprov's own events go straight to stderr, without passing through
    # the standard library's logging: a log line per request must be cheap.
    structlog.configure(
        processors=[
            _merge_request,
            structlog.processors.add_log_level,
            _add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        logger_factory=structlog.WriteLoggerFactory(file=_Stderr()),  # type: ignore[arg-type]
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(_Stderr())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The server's own access log prints raw query strings, which hold the
    # partner's hash and personal data: our request log replaces it.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
