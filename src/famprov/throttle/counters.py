"""Where the counts live: in this process, or in Redis for every process.

Both keep one number per key, the generic cell rate algorithm's theoretical
arrival time (see `Policy`), and offer the same three operations:

- ``wait``: the first of some keys with no room for one more request, and
  how long until there is (nothing is counted);
- ``take``: count one request against a key unless it is over its rate;
- ``add``: count one against each of some keys, over their rate or not (a
  failed authentication has happened, whatever the limit says), never
  further than one window ahead.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from famprov.logs import log
from famprov.throttle.rates import Policy

# About 200 bytes each: the in-process counts stay under 10 MB whatever the
# callers send. Past this many keys the one written longest ago goes.
MAX_ENTRIES = 50_000
# A Redis that does not answer in this time counts as down: every request
# would otherwise wait on it.
REDIS_TIMEOUT_SECONDS = 0.25
# While Redis is down, each process counts alone, and asks Redis again after
# this long.
REDIS_RETRY_SECONDS = 1.0

Check = tuple[str, Policy]
Taken = tuple[float, int, float]
"""How long to wait (0: counted), the requests left now, and the effective
window: the seconds within which no more than those can be sent (until the
quota grows by one)."""


class Counters(Protocol):
    async def wait(self, checks: Sequence[Check]) -> tuple[Policy, float] | None: ...

    async def take(self, key: str, policy: Policy) -> Taken: ...

    async def add(self, charges: Sequence[Check]) -> None: ...

    async def close(self) -> None: ...

    def __len__(self) -> int:
        """Keys held in this process."""
        ...

    @property
    def errors(self) -> int:
        """Failures of a shared store so far; always 0 in process."""
        ...


class MemoryCounters:
    """The counts of this process, in one dict of bounded size.

    Callers choose the keys (an address, a partner name as sent), so the dict
    holds at most `MAX_ENTRIES`; a key written to moves to the end, and the
    one at the front goes when the dict is full. Everything runs on the
    event loop's thread, without locks.
    """

    def __init__(
        self,
        max_entries: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tat: dict[str, float] = {}
        self._max = MAX_ENTRIES if max_entries is None else max_entries
        self._clock = clock

    def __len__(self) -> int:
        return len(self._tat)

    @property
    def errors(self) -> int:
        return 0

    async def wait(self, checks: Sequence[Check]) -> tuple[Policy, float] | None:
        return self.wait_now(checks)

    def wait_now(self, checks: Sequence[Check]) -> tuple[Policy, float] | None:
        now = self._clock()
        tats = self._tat
        for key, policy in checks:
            tat = tats.get(key)
            if tat is not None:
                over = tat + policy.interval - policy.window - now
                if over > 0:
                    return policy, over
        return None

    async def take(self, key: str, policy: Policy) -> Taken:
        return self.take_now(key, policy)

    def take_now(self, key: str, policy: Policy) -> Taken:
        now = self._clock()
        tat = self._tat.get(key, now)
        if tat < now:
            tat = now
        new = tat + policy.interval
        over = new - policy.window - now
        if over > 0:
            return over, 0, over
        self._put(key, new)
        return _allowed(policy, new - now)

    async def add(self, charges: Sequence[Check]) -> None:
        self.add_now(charges)

    def add_now(self, charges: Sequence[Check]) -> None:
        now = self._clock()
        for key, policy in charges:
            tat = max(self._tat.get(key, now), now) + policy.interval
            self._put(key, min(tat, now + policy.window))

    def _put(self, key: str, tat: float) -> None:
        tats = self._tat
        if tats.pop(key, None) is None and len(tats) >= self._max:
            del tats[next(iter(tats))]
        tats[key] = tat

    async def close(self) -> None:
        pass


def _allowed(policy: Policy, ahead: float) -> Taken:
    """A counted request's answer, when the key runs ``ahead`` of now: the
    requests that still fit, and how soon one more does."""
    interval = policy.interval
    left = max(0, math.floor((policy.window - ahead) / interval + 1e-9))
    return 0.0, left, ahead - policy.window + (left + 1) * interval


# The same algorithm on Redis's clock, in whole microseconds, so that hosts
# whose clocks differ count alike. ARGV[1] is the operation; ARGV[2i] and
# ARGV[2i+1] are KEYS[i]'s interval and window. Numbers are written with
# %.0f: Lua's own conversion keeps 14 digits, and a time in microseconds has
# 16.
GCRA = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local operation = ARGV[1]
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i])
  local window = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  if operation == 'wait' then
    local over = tat + interval - window - now
    if over > 0 then return {i, over, 0} end
  else
    local new = tat + interval
    if operation == 'take' then
      if new - window > now then return {1, new - window - now, 0} end
    elseif new > now + window then
      new = now + window
    end
    redis.call('SET', key, string.format('%.0f', new),
               'PX', math.ceil((new - now) / 1000))
    if operation == 'take' then return {0, 0, new - now} end
  end
end
return {0, 0, 0}
"""


class RedisCounters:
    """The counts of every process and host that shares one Redis.

    When Redis fails (down, slow, refusing), each process counts alone in
    its own `MemoryCounters` and asks Redis again a second later: the limits
    hold per process rather than not at all, and no request waits on a Redis
    that is gone. The first failure of an outage is logged as a warning, the
    recovery as information; `errors` counts every failure, for /metrics.
    """

    def __init__(self, url: str, prefix: str) -> None:
        # Imported here: redis-py costs every process that loads it some
        # 8 MB, the writer process included, and only this store needs it.
        from redis.asyncio import Redis
        from redis.exceptions import RedisError

        self._failures = (RedisError, OSError)
        self._redis = Redis.from_url(
            url,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        )
        self._gcra = self._redis.register_script(GCRA)
        self._prefix = prefix + "rl:"
        self._local = MemoryCounters()
        self._down_until = 0.0
        self._failing = False
        self.errors = 0

    def __len__(self) -> int:
        return len(self._local)

    async def wait(self, checks: Sequence[Check]) -> tuple[Policy, float] | None:
        reply = await self._run("wait", checks)
        if reply is None:
            return self._local.wait_now(checks)
        found, over, _ = reply
        return (checks[found - 1][1], over / 1e6) if found else None

    async def take(self, key: str, policy: Policy) -> Taken:
        reply = await self._run("take", ((key, policy),))
        if reply is None:
            return self._local.take_now(key, policy)
        refused, over, ahead = reply
        if refused:
            return over / 1e6, 0, over / 1e6
        return _allowed(policy, ahead / 1e6)

    async def add(self, charges: Sequence[Check]) -> None:
        if await self._run("add", charges) is None:
            self._local.add_now(charges)

    async def _run(self, operation: str, checks: Sequence[Check]) -> list[int] | None:
        """The script's reply, or None while Redis cannot give one."""
        if self._down_until and time.monotonic() < self._down_until:
            return None
        keys = [self._prefix + key for key, _ in checks]
        args: list[str | int] = [operation]
        for _, policy in checks:
            args += (_micros(policy.interval), _micros(policy.window))
        try:
            reply: list[int] = await self._gcra(keys=keys, args=args)
        except self._failures as exc:
            self._down(exc)
            return None
        if self._failing:
            self._failing = False
            self._down_until = 0.0
            log.info("rate_limit_store_recovered")
        return reply

    def _down(self, exc: Exception) -> None:
        self.errors += 1
        self._down_until = time.monotonic() + REDIS_RETRY_SECONDS
        if not self._failing:
            self._failing = True
            # The type only: a connection error's text names the server.
            log.warning(
                "rate_limit_store_unavailable",
                error=type(exc).__name__,
                fallback="per-process counts",
            )

    async def close(self) -> None:
        await self._redis.aclose()


def _micros(seconds: float) -> int:
    return max(1, round(seconds * 1e6))
