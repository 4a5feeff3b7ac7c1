"""Where the counts live: in this process, or in Redis for every process.

Both keep one number per key, the generic cell rate algorithm's theoretical
arrival time (see `Policy`). A request is settled in one step (one Redis
round trip), over its failure keys (the client address, the partner name)
and, once the partner is known, its partner key:

- if a failure key has no room for one more, it is refused and nothing is
  counted;
- ``FAIL``: otherwise one failure is counted against each failure key, over
  the rate or not (it has happened), never further than one window ahead;
- ``TAKE``: otherwise one request is counted against the partner key unless
  that is over its rate;
- ``CHECK``: otherwise nothing is counted (a partner without a rate).

`blocked` answers without a round trip, from what this process knows: the
whole truth in process; in Redis's case, the refusals it has been told of
and not yet seen out. The grant path asks it first, so that a client that
is locked out costs neither Redis nor the store a thing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

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
Operation = Literal["check", "fail", "take"]
CHECK: Operation = "check"
FAIL: Operation = "fail"
TAKE: Operation = "take"

Settled = tuple[Policy | None, float, int, float]
"""The policy that refused (None: counted), how long to wait, and for a
counted take the requests left now and the effective window: the seconds
within which no more than those can be sent (until one more fits)."""
_PASSED: Settled = (None, 0.0, 0, 0.0)


class Counters(Protocol):
    def blocked(self, checks: Sequence[Check]) -> tuple[Policy, float] | None: ...

    async def settle(
        self, checks: Sequence[Check], operation: Operation, take: Check | None
    ) -> Settled: ...

    async def close(self) -> None: ...

    def __len__(self) -> int:
        """Keys held in this process."""
        ...

    @property
    def errors(self) -> int:
        """Failures of a shared store so far; always 0 in process."""
        ...


class BoundedTimes:
    """A time per key, at most `MAX_ENTRIES` of them.

    Callers choose the keys (an address, a partner name as sent), so the
    number held is capped: a key written to moves to the end, and the one at
    the front (written longest ago) goes when the dict is full. Everything
    runs on the event loop's thread, without locks.
    """

    def __init__(self, max_entries: int | None = None) -> None:
        self.times: dict[str, float] = {}
        self._max = MAX_ENTRIES if max_entries is None else max_entries

    def __len__(self) -> int:
        return len(self.times)

    def put(self, key: str, value: float) -> None:
        times = self.times
        if times.pop(key, None) is None and len(times) >= self._max:
            del times[next(iter(times))]
        times[key] = value


class MemoryCounters:
    """The counts of this process."""

    def __init__(
        self,
        max_entries: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tat = BoundedTimes(max_entries)
        self._clock = clock

    def __len__(self) -> int:
        return len(self._tat)

    @property
    def errors(self) -> int:
        return 0

    def blocked(self, checks: Sequence[Check]) -> tuple[Policy, float] | None:
        now = self._clock()
        tats = self._tat.times
        for key, policy in checks:
            tat = tats.get(key)
            if tat is not None:
                over = tat + policy.interval - policy.window - now
                if over > 0:
                    return policy, over
        return None

    async def settle(
        self, checks: Sequence[Check], operation: Operation, take: Check | None
    ) -> Settled:
        return self.settle_now(checks, operation, take)

    def settle_now(
        self, checks: Sequence[Check], operation: Operation, take: Check | None
    ) -> Settled:
        found = self.blocked(checks) if checks else None
        if found is not None:
            return found[0], found[1], 0, found[1]
        if operation == FAIL:
            self._fail(checks)
        elif take is not None:
            return self._take(*take)
        return _PASSED

    def _take(self, key: str, policy: Policy) -> Settled:
        now = self._clock()
        tat = self._tat.times.get(key, now)
        if tat < now:
            tat = now
        new = tat + policy.interval
        over = new - policy.window - now
        if over > 0:
            return policy, over, 0, over
        self._tat.put(key, new)
        return _counted(policy, new - now)

    def _fail(self, checks: Sequence[Check]) -> None:
        now = self._clock()
        tats = self._tat
        for key, policy in checks:
            tat = max(tats.times.get(key, now), now) + policy.interval
            tats.put(key, min(tat, now + policy.window))

    async def close(self) -> None:
        pass


def _counted(policy: Policy, ahead: float) -> Settled:
    """A counted take's answer, when the key runs ``ahead`` of now: the
    requests that still fit, and how soon one more does."""
    interval = policy.interval
    left = max(0, math.floor((policy.window - ahead) / interval + 1e-9))
    return None, 0.0, left, ahead - policy.window + (left + 1) * interval


# The same, on Redis's clock (so that hosts whose clocks differ count
# alike), in whole microseconds. ARGV[1] is the operation and ARGV[2] the
# number of failure keys, which come first in KEYS; ARGV[2i+1] and
# ARGV[2i+2] are KEYS[i]'s interval and window. The reply is {i, wait, ahead}:
# i is 0 when counted, else the key that refused. Numbers are written with
# %.0f: Lua's own conversion keeps 14 digits, and a time in microseconds has
# 16.
SETTLE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local operation, checks = ARGV[1], tonumber(ARGV[2])
local tats = {}
local function load(i)
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  tats[i] = tat
  return tonumber(ARGV[2 * i + 1]), tonumber(ARGV[2 * i + 2]), tat
end
local function store(i, new)
  redis.call('SET', KEYS[i], string.format('%.0f', new),
             'PX', math.ceil((new - now) / 1000))
end
for i = 1, checks do
  local interval, window, tat = load(i)
  local over = tat + interval - window - now
  if over > 0 then return {i, over, 0} end
end
if operation == 'fail' then
  for i = 1, checks do
    local interval, window = tonumber(ARGV[2 * i + 1]), tonumber(ARGV[2 * i + 2])
    store(i, math.min(tats[i] + interval, now + window))
  end
elseif operation == 'take' then
  local i = checks + 1
  local interval, window, tat = load(i)
  local new = tat + interval
  if new - window > now then return {i, new - window - now, 0} end
  store(i, new)
  return {0, 0, new - now}
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
        # 8 MB, and only this store needs it.
        from redis.asyncio import Redis
        from redis.exceptions import RedisError

        self._failures = (RedisError, OSError)
        self._redis = Redis.from_url(
            url,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        )
        self._settle = self._redis.register_script(SETTLE)
        self._prefix = prefix + "rl:"
        self._local = MemoryCounters()
        # Failure keys Redis refused, until when: asked first, locally.
        self._refused = BoundedTimes()
        self._down_until = 0.0
        self._failing = False
        self.errors = 0

    def __len__(self) -> int:
        return len(self._local) + len(self._refused)

    def blocked(self, checks: Sequence[Check]) -> tuple[Policy, float] | None:
        if self._down_until:
            return self._local.blocked(checks)
        now = time.monotonic()
        refused = self._refused.times
        for key, policy in checks:
            until = refused.get(key)
            if until is not None and until > now:
                return policy, until - now
        return None

    async def settle(
        self, checks: Sequence[Check], operation: Operation, take: Check | None
    ) -> Settled:
        every = [*checks, take] if take is not None else checks
        reply = await self._run(operation, len(checks), every)
        if reply is None:
            return self._local.settle_now(checks, operation, take)
        index, over, ahead = reply
        if index == 0:
            if operation == TAKE and take is not None:
                return _counted(take[1], ahead / 1e6)
            return _PASSED
        key, policy = every[index - 1]
        wait = over / 1e6
        if index <= len(checks):
            self._refused.put(key, time.monotonic() + wait)
        return policy, wait, 0, wait

    async def _run(
        self, operation: Operation, checks: int, every: Sequence[Check]
    ) -> list[int] | None:
        """The script's reply, or None while Redis cannot give one."""
        if self._down_until and time.monotonic() < self._down_until:
            return None
        keys = [self._prefix + key for key, _ in every]
        args: list[str | int] = [operation, checks]
        for _, policy in every:
            args += (_micros(policy.interval), _micros(policy.window))
        try:
            reply: list[int] = await self._settle(keys=keys, args=args)
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
