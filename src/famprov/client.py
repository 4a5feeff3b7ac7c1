"""The partner's client for the v1 API, on httpx.

    from famprov.client import Client

    with Client("https://famprov.example", partner="acme", salt=salt) as client:
        grant = client.grant(transaction_id="0001", first_name="Ann",
                             email="ann@example.com")
        print(grant.order_number, grant.vault_url)

Every value is URL-encoded (the vendor's sample does not encode, which breaks
emails holding ``+`` or ``&``), the hash is computed here, and timeouts,
connection failures and 5xx answers are retried with exponential backoff:
safe, because the transaction id makes a grant idempotent. A 429 is retried
after the time its ``Retry-After`` asks for, as long as a grant's waits on
429s stay within ``max_rate_wait`` seconds in all. Refusals raise a typed
`ApiError` carrying the server's message.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import logging
import random
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Self
from urllib.parse import quote, urlencode

import httpx

from famprov.logs import Secret
from famprov.partners.hashing import compute_hash

PATH = "/bi_api/v1/services/partner/create-license"


class _HideQueries(logging.Filter):
    """httpx logs each request's URL at INFO; ours carry the hash and the
    person's email in the query string, which no log may hold."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                f"{arg.copy_with(query=None)}?[secure]"
                if isinstance(arg, httpx.URL) and arg.query
                else arg
                for arg in record.args
            )
        return True


logging.getLogger("httpx").addFilter(_HideQueries())
RETRYABLE_STATUS = frozenset({500, 502, 503, 504})
TOO_MANY_REQUESTS = 429
# A crowd of clients told the same Retry-After comes back spread over this
# share of it, not all at the same instant.
RETRY_AFTER_SPREAD = 0.1


@dataclass(frozen=True, slots=True)
class Grant:
    order_number: str
    vault_url: str


class ClientError(Exception):
    """Base of the client's errors."""


class ApiError(ClientError):
    """The server refused the grant; ``message`` is its own words."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"{status}: {message}")


class InvalidRequest(ApiError):  # noqa: N818 - named after the server's answer
    """400: a parameter is missing or invalid."""


class Unauthorized(ApiError):  # noqa: N818
    """401: unknown or disabled partner, or a hash that does not verify."""


class QuotaExceeded(ApiError):  # noqa: N818
    """403: the partner's license quota is used up."""


class Conflict(ApiError):  # noqa: N818
    """409: the transaction id or the person already has another grant."""


class RateLimited(ApiError):  # noqa: N818
    """429: over the partner's request rate, or too many failed
    authentications, for longer than the client was allowed to wait.
    ``retry_after`` is the seconds the server asked to wait, when it said."""

    def __init__(self, status: int, message: str, retry_after: float | None = None):
        super().__init__(status, message)
        self.retry_after = retry_after


class Unavailable(ClientError):  # noqa: N818
    """The server could not be reached, or kept failing, after every retry."""


_ERRORS: dict[int, type[ApiError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: QuotaExceeded,
    409: Conflict,
    429: RateLimited,
}


class _Policy:
    """What one call sends and how it is retried; shared by both clients."""

    def __init__(
        self,
        base_url: str,
        partner: str,
        salt: str,
        retries: int,
        backoff: float,
        max_rate_wait: float,
    ) -> None:
        self.endpoint = f"{_base_url(base_url)}{PATH}"
        self.partner = partner
        self.salt = Secret(salt)
        self.retries = retries
        self.backoff = backoff
        self.max_rate_wait = max_rate_wait

    def params(
        self, transaction_id: str, first_name: str, email: str, last_name: str | None
    ) -> dict[str, str]:
        for name, value in (
            ("transaction_id", transaction_id),
            ("first_name", first_name),
            ("email", email),
        ):
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a string, not {type(value).__name__}")
        if last_name is not None and not isinstance(last_name, str):
            raise TypeError(
                f"last_name must be a string or None, not {type(last_name).__name__}"
            )
        params = {
            "transaction_id": transaction_id,
            "first_name": first_name,
            "email": email,
            "hash": compute_hash(email, self.salt.reveal()),
            "partner_name": self.partner,
        }
        if last_name:
            params["last_name"] = last_name
        return params

    def url(
        self, transaction_id: str, first_name: str, email: str, last_name: str | None
    ) -> str:
        """The whole URL, encoded here: given a base URL and parameters, httpx
        parses the URL three times over, a third of a grant's cost in the
        client (measured)."""
        params = self.params(transaction_id, first_name, email, last_name)
        return f"{self.endpoint}?{urlencode(params, safe='', quote_via=quote)}"

    def attempts(self) -> _Attempts:
        return _Attempts(self.retries, self.backoff, self.max_rate_wait)

    def settle(
        self, answer: httpx.Response | Exception, attempts: _Attempts
    ) -> Grant | float:
        """The grant, or how long to wait before trying again; raises a
        refusal, or `Unavailable` once the retries are spent."""
        if isinstance(answer, httpx.Response):
            status = answer.status_code
            if status == TOO_MANY_REQUESTS:
                wait = attempts.rate_wait(retry_after(answer))
                if wait is None:
                    return self.result(answer)  # raises RateLimited
                return wait
            if status not in RETRYABLE_STATUS:
                return self.result(answer)
            reason = f"server kept answering {status}"
        else:
            reason = f"server unreachable: {type(answer).__name__}"
        delay = next(attempts.delays, None)
        if delay is None:
            cause = answer if isinstance(answer, Exception) else None
            raise Unavailable(reason) from cause
        return delay

    @staticmethod
    def result(response: httpx.Response) -> Grant:
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        if response.status_code == 200 and body.get("success") is True:
            return Grant(str(body["order_number"]), str(body["vault_url"]))
        message = str(body.get("message") or response.reason_phrase)
        if response.status_code == 404:
            # Every famprov answers the partner path: a 404 means the URL
            # names something else.
            where = response.url.copy_with(query=None)
            message = (
                f"{message}: no famprov partner API at {where} "
                "(is the base URL the famprov server's?)"
            )
        if response.status_code == TOO_MANY_REQUESTS:
            raise RateLimited(response.status_code, message, retry_after(response))
        raise _ERRORS.get(response.status_code, ApiError)(response.status_code, message)


class _Attempts:
    """The retries one grant has left: backoff delays after failures, and a
    budget of time to wait on 429s."""

    def __init__(self, retries: int, backoff: float, max_rate_wait: float) -> None:
        self.delays: Iterator[float] = (
            backoff * 2**attempt * random.uniform(0.5, 1.5)
            for attempt in range(retries)
        )
        self._rate_budget = max_rate_wait

    def rate_wait(self, asked: float | None) -> float | None:
        """How long to wait after a 429, or None to give up: the server's
        Retry-After (a backoff delay when it sends none), while the budget
        lasts."""
        if asked is None:
            asked = next(self.delays, None)
            if asked is None:
                return None
        # At least a second: a Retry-After of 0 would make a busy loop.
        wait = max(asked, 1.0) * random.uniform(1, 1 + RETRY_AFTER_SPREAD)
        if wait > self._rate_budget:
            return None
        self._rate_budget -= wait
        return wait


def retry_after(response: httpx.Response) -> float | None:
    """The seconds a ``Retry-After`` asks for (a number or an HTTP date);
    None without a readable one."""
    value = response.headers.get("retry-after", "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every client: building one reads the system's CA
    bundle, about 30 ms, which the importer's workers would each pay."""
    return httpx.create_ssl_context()


def _base_url(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url.rstrip("/"))
    except httpx.InvalidURL as exc:
        raise ClientError(f"invalid server URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ClientError("server URL must be http:// or https:// with a host")
    return parsed.copy_with(path=parsed.path.rstrip("/"))


class Client:
    """Synchronous client; use as a context manager or call `close`."""

    def __init__(
        self,
        base_url: str,
        *,
        partner: str,
        salt: str,
        timeout: float = 10.0,
        retries: int = 4,
        backoff: float = 0.5,
        max_rate_wait: float = 300.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._policy = _Policy(base_url, partner, salt, retries, backoff, max_rate_wait)
        self._http = httpx.Client(
            timeout=timeout,
            transport=transport,
            verify=_tls(),
        )

    def grant(
        self,
        *,
        transaction_id: str,
        first_name: str,
        email: str,
        last_name: str | None = None,
    ) -> Grant:
        url = self._policy.url(transaction_id, first_name, email, last_name)
        attempts = self._policy.attempts()
        while True:
            try:
                step = self._policy.settle(self._http.get(url), attempts)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                step = self._policy.settle(exc, attempts)
            if isinstance(step, Grant):
                return step
            time.sleep(step)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient:
    """Asynchronous client; share one across many concurrent grants."""

    def __init__(
        self,
        base_url: str,
        *,
        partner: str,
        salt: str,
        timeout: float = 10.0,
        retries: int = 4,
        backoff: float = 0.5,
        max_rate_wait: float = 300.0,
        max_connections: int = 100,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._policy = _Policy(base_url, partner, salt, retries, backoff, max_rate_wait)
        self._http = httpx.AsyncClient(
            timeout=timeout,
            transport=transport,
            verify=_tls(),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
            ),
        )

    async def grant(
        self,
        *,
        transaction_id: str,
        first_name: str,
        email: str,
        last_name: str | None = None,
    ) -> Grant:
        url = self._policy.url(transaction_id, first_name, email, last_name)
        attempts = self._policy.attempts()
        while True:
            try:
                response = await self._http.get(url)
                step = self._policy.settle(response, attempts)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                step = self._policy.settle(exc, attempts)
            if isinstance(step, Grant):
                return step
            await asyncio.sleep(step)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
