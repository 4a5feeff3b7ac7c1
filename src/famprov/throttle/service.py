"""The abuse limits of the grant path, in the order `GrantService.grant`
applies them:

1. `admit`, before the partner is looked up: a client address, or a partner
   name, that has failed to authenticate too often lately is refused, right
   hash or not, until it is under its limit again (429), as far as this
   process knows without asking Redis;
2. `failed`, when the hash does not verify: one failure more for the
   address and for the name as sent, whether a partner has it or not (or
   the 429, if Redis says either is over its limit already);
3. `charge`, once the partner is authenticated: one request more against
   its request rate (its own, or the operator's default), refused when over
   (429), after the same check of the failure counts. Only an authenticated
   request counts, so nobody but the partner can spend its rate.

Each of `failed` and `charge` is one step of the counts: one round trip
with Redis.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from famprov import logs
from famprov.errors import FailedAuthLimitError, PartnerRateError, RateLimitedError
from famprov.partners.service import Partner, could_be_partner
from famprov.throttle.counters import (
    CHECK,
    FAIL,
    TAKE,
    Check,
    Counters,
    MemoryCounters,
    RedisCounters,
)
from famprov.throttle.rates import Policy, Rate, RateError

if TYPE_CHECKING:
    from famprov.config import Settings

PARTNER = "partner"
FAILED_AUTH_ADDRESS = "failed-auth-address"
FAILED_AUTH_NAME = "failed-auth-name"


@dataclass(frozen=True, slots=True)
class Allowance:
    """What a partner may still send, for the answer's RateLimit fields."""

    policy: Policy
    remaining: int
    window: float


class Throttle:
    """The limits of one serving process, over its counts."""

    def __init__(
        self,
        counters: Counters,
        *,
        partner_rate: Rate | None,
        failed_auth_per_address: Rate | None,
        failed_auth_per_name: Rate | None,
    ) -> None:
        self._counters = counters
        self._default = Policy(PARTNER, partner_rate) if partner_rate else None
        self._per_address = (
            Policy(FAILED_AUTH_ADDRESS, failed_auth_per_address)
            if failed_auth_per_address
            else None
        )
        self._per_name = (
            Policy(FAILED_AUTH_NAME, failed_auth_per_name)
            if failed_auth_per_name
            else None
        )
        # A partner's own rate as the store holds it -> its policy; only the
        # operator writes these, so there are few.
        self._policies: dict[str, Policy | None] = {}
        self.refused: Counter[str] = Counter()

    @classmethod
    def from_settings(cls, settings: Settings) -> Throttle:
        counters: Counters
        if settings.redis_url:
            counters = RedisCounters(settings.redis_url, settings.redis_key_prefix)
        else:
            counters = MemoryCounters()
        return cls(
            counters,
            partner_rate=settings.partner_rate_limit,
            failed_auth_per_address=settings.failed_auth_rate_per_address_limit,
            failed_auth_per_name=settings.failed_auth_rate_per_name_limit,
        )

    @property
    def store_errors(self) -> int:
        return self._counters.errors

    @property
    def keys(self) -> int:
        """Keys this process holds: its counts, or with Redis the refusals it
        remembers and what it counted while Redis was unavailable."""
        return len(self._counters)

    async def close(self) -> None:
        await self._counters.close()

    def admit(self, client: str | None, name: str) -> list[Check]:
        """Refuse a caller over a limit of failed authentications, as far as
        this process knows; return the keys `failed` and `charge` take."""
        checks = self._failure_keys(client, name)
        if checks:
            found = self._counters.blocked(checks)
            if found is not None:
                self._refuse(FailedAuthLimitError, *found)
        return checks

    async def failed(self, checks: list[Check]) -> None:
        """Count a failed authentication against the address and the name."""
        if checks:
            refused, wait, _, _ = await self._counters.settle(checks, FAIL, None)
            if refused is not None:
                self._refuse(FailedAuthLimitError, refused, wait)

    async def charge(self, checks: list[Check], partner: Partner) -> Allowance | None:
        """Count a request of an authenticated partner; None when unlimited."""
        policy = self._policy_of(partner.rate_limit)
        if policy is None:
            if checks:
                refused, wait, _, _ = await self._counters.settle(checks, CHECK, None)
                if refused is not None:
                    self._refuse(FailedAuthLimitError, refused, wait)
            return None
        refused, wait, remaining, window = await self._counters.settle(
            checks, TAKE, ("partner:" + partner.name, policy)
        )
        if refused is not None:
            error = PartnerRateError if refused is policy else FailedAuthLimitError
            self._refuse(error, refused, wait)
        return Allowance(policy, remaining, window)

    def _failure_keys(self, client: str | None, name: str) -> list[Check]:
        checks = []
        if self._per_address is not None:
            checks.append((address_key(client), self._per_address))
        if self._per_name is not None:
            # Names no partner can have share one count, so that the keys
            # stay small and plain.
            key = "name:" + name if could_be_partner(name) else "name:\0none"
            checks.append((key, self._per_name))
        return checks

    def _policy_of(self, stored: str | None) -> Policy | None:
        if stored is None:
            return self._default
        try:
            return self._policies[stored]
        except KeyError:
            pass
        try:
            rate = Rate.parse(stored)
        except RateError:
            # Written by hand into the store: the default is the safe reading.
            logs.log.warning("partner_rate_unreadable", rate_limit=stored[:40])
            policy = self._default
        else:
            policy = Policy(PARTNER, rate) if rate is not None else None
        self._policies[stored] = policy
        return policy

    def _refuse(
        self, error: type[RateLimitedError], policy: Policy, wait: float
    ) -> None:
        self.refused[policy.name] += 1
        logs.note(limit=policy.name)
        raise error(policy, wait)


def address_key(client: str | None) -> str:
    """The key of a client address: an IPv6 address by its /64, which one
    customer of a provider usually holds whole."""
    if client is None:
        return "address:-"
    if ":" not in client:
        return "address:" + client
    return "address:" + _ipv6_network(client)


@functools.lru_cache(maxsize=4096)
def _ipv6_network(client: str) -> str:
    try:
        address = ipaddress.IPv6Address(client)
    except ValueError:
        return client[:64]
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))
