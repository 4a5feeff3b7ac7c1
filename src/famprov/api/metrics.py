"""``/metrics``: Prometheus text format.

Request counts and latencies are this process's; the outbox and license
figures are read from the store at each scrape, so they are the service's.
"""

# TODO: with `famprov serve --workers N` each scrape sees one process's
# request counters only; summing them needs prometheus_client's multiprocess
# mode (a shared folder set before the workers start).

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterator
from itertools import accumulate

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from starlette.requests import Request
from starlette.responses import Response

from famprov.api import partner_v1
from famprov.store.schema import licenses, outbox
from famprov.throttle.service import (
    FAILED_AUTH_ADDRESS,
    FAILED_AUTH_NAME,
    PARTNER,
    Throttle,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Only these paths are labels; anything else counts as "other", so that a
# scan of random URLs cannot grow the metrics without bound.
ROUTES = partner_v1.PATHS | frozenset(
    {
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.yaml",
        "/openapi.json",
        "/docs",
    }
)


class StoreCollector(Collector):
    """Invitations by state and licenses by status, counted at scrape time."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        with self._engine.connect() as conn:
            by_state = conn.execute(
                select(outbox.c.status, func.count()).group_by(outbox.c.status)
            ).all()
            by_status = conn.execute(
                select(licenses.c.status, func.count()).group_by(licenses.c.status)
            ).all()
        invitations = GaugeMetricFamily(
            "famprov_invitations",
            "Invitations in the outbox, by state",
            labels=["state"],
        )
        for state, count in by_state:
            invitations.add_metric([state], count)
        stored = GaugeMetricFamily(
            "famprov_licenses",
            "Licenses by recorded status (term expiry is not applied)",
            labels=["status"],
        )
        for status, count in by_status:
            stored.add_metric([status], count)
        yield invitations
        yield stored


class ThrottleCollector(Collector):
    """429 answers by the limit that refused them, and failures of the
    shared store of the limits' counts (Redis)."""

    def __init__(self, throttle: Throttle) -> None:
        self._throttle = throttle

    def collect(self) -> Iterator[Metric]:
        refused = CounterMetricFamily(
            "famprov_rate_limited",
            "Requests answered 429, by the limit they were over",
            labels=["limit"],
        )
        for limit in (PARTNER, FAILED_AUTH_ADDRESS, FAILED_AUTH_NAME):
            refused.add_metric([limit], self._throttle.refused[limit])
        errors = CounterMetricFamily(
            "famprov_rate_limit_store_errors",
            "Failed calls to the shared store of the limits' counts; each "
            "process counted alone meanwhile",
        )
        errors.add_metric([], self._throttle.store_errors)
        keys = GaugeMetricFamily(
            "famprov_rate_limit_keys",
            "Keys held by this process's counts (bounded; with Redis, the "
            "refusals it remembers and what it counted while Redis was down)",
        )
        keys.add_metric([], self._throttle.keys)
        yield refused
        yield errors
        yield keys


INVITATION_PREFIX = "/invite/"
INVITATION_ROUTE = "/invite/{token}"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_BOUNDS = [*(str(float(b)) for b in LATENCY_BUCKETS), "+Inf"]


class RequestCollector(Collector):
    """Request counts and latencies, kept as plain numbers.

    Every request adds to them, on the event loop's thread only, so they
    need none of the locks of prometheus_client's own metric objects, which
    cost more than the rest of the bookkeeping; they become metric families
    at scrape time.
    """

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.grants: dict[str, int] = defaultdict(int)
        # Per route: a count per bucket (the last one is +Inf), and the sum.
        self.latency: dict[str, list[float]] = {}

    def observe(
        self, path: str, status: int, seconds: float, outcome: str | None
    ) -> None:
        if path in ROUTES:
            route = path
        elif path.startswith(INVITATION_PREFIX):
            route = INVITATION_ROUTE  # never the token itself
        else:
            route = "other"
        self.requests[(route, status)] += 1
        if outcome is not None and route in partner_v1.PATHS:
            self.grants[outcome] += 1
        counts = self.latency.get(route)
        if counts is None:
            counts = self.latency[route] = [0] * (len(LATENCY_BUCKETS) + 2)
        counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        counts[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        # Scrapes run on another thread; copying a dict or a list is one step
        # under the interpreter lock, so each copy is consistent.
        by_status = list(self.requests.items())
        by_outcome = list(self.grants.items())
        by_route = [
            (route, list(counts)) for route, counts in list(self.latency.items())
        ]
        requests = CounterMetricFamily(
            "famprov_http_requests",
            "HTTP requests answered, by route and status",
            labels=["route", "status"],
        )
        for (route, status), count in sorted(by_status):
            requests.add_metric([route, str(status)], count)
        latency = HistogramMetricFamily(
            "famprov_http_request_duration_seconds",
            "Time to answer an HTTP request, by route",
            labels=["route"],
        )
        for route, counts in sorted(by_route):
            cumulative = accumulate(counts[:-1])
            latency.add_metric(
                [route], list(zip(_BOUNDS, cumulative, strict=True)), counts[-1]
            )
        grants = CounterMetricFamily(
            "famprov_grants",
            "Answers of the partner endpoint, by outcome",
            labels=["outcome"],
        )
        for outcome, count in sorted(by_outcome):
            grants.add_metric([outcome], count)
        yield requests
        yield latency
        yield grants


class Metrics:
    """The metrics of one serving process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._requests = RequestCollector()
        self.registry.register(self._requests)
        self.observe = self._requests.observe
        # Observed once a commit, not once a request: the library's own
        # metric objects will do.
        self._batch_size = Histogram(
            "famprov_writer_batch_grants",
            "Grants written by one commit of the batching writer",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self._batch_seconds = Histogram(
            "famprov_writer_batch_seconds",
            "Time from a batch's first statement to its commit",
            buckets=(0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.25),
            registry=self.registry,
        )

    def observe_commit(self, grants: int, seconds: float) -> None:
        self._batch_size.observe(grants)
        self._batch_seconds.observe(seconds)

    def watch_store(self, engine: Engine) -> None:
        self.registry.register(StoreCollector(engine))

    def watch_throttle(self, throttle: Throttle) -> None:
        self.registry.register(ThrottleCollector(throttle))


async def endpoint(request: Request) -> Response:
    metrics: Metrics = request.app.state.metrics
    body = await asyncio.to_thread(generate_latest, metrics.registry)
    return Response(body, media_type=CONTENT_TYPE)
