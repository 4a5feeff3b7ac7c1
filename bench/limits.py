"""The abuse limits' cost on the grant path, per granted request.

    .venv/bin/python bench/limits.py [--redis redis://127.0.0.1:6379/0]

What `GrantService.grant` calls for a partner that authenticates: `admit`
(the failure counts, as far as the process knows) and `charge` (one step of
the counts: the failure counts checked and the partner's rate taken), then
the answer's RateLimit field. In process always; with ``--redis``, counted
in that Redis too (under a key prefix of its own, deleted afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from datetime import UTC, datetime

from famprov.logs import Secret
from famprov.partners.service import Partner
from famprov.throttle.counters import Counters, MemoryCounters, RedisCounters
from famprov.throttle.rates import Rate
from famprov.throttle.service import Throttle


async def per_grant(counters: Counters, grants: int) -> float:
    """The best of three runs, in microseconds a grant."""
    throttle = Throttle(
        counters,
        partner_rate=Rate(1_000_000, 1),
        failed_auth_per_address=Rate(20, 600),
        failed_auth_per_name=Rate(60, 600),
    )
    partner = Partner(1, "bench", Secret("-"), True, datetime.now(UTC))
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(grants):
            checks = throttle.admit("127.0.0.1", partner.name)
            allowance = await throttle.charge(checks, partner)
            assert allowance is not None
            allowance.policy.state(allowance.remaining, allowance.window)
        runs.append((time.perf_counter() - started) / grants * 1e6)
    await throttle.close()
    return min(runs)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", help="also measure counts in this Redis")
    args = parser.parse_args()
    print(f"in process: {await per_grant(MemoryCounters(), 200_000):.2f} µs a grant")
    if args.redis:
        import redis

        prefix = f"famprov-bench-{secrets.token_hex(4)}:"
        shared = RedisCounters(args.redis, prefix)
        print(f"in Redis:   {await per_grant(shared, 3_000):.0f} µs a grant")
        client = redis.Redis.from_url(args.redis)
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()


if __name__ == "__main__":
    asyncio.run(main())
