"""``/metrics``: Prometheus text format.

Request counts and latencies are this process's; the outbox and license
figures are read from the store at each scrape, so they are the service's.
"""

# TODO: with `famprov serve --workers N` each scrape sees one process's
# request counters only; summing them needs prometheus_client's multiprocess
# mode (a shared folder set before the workers start).

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from starlette.requests import Request
from starlette.responses import Response

from famprov.store.schema import licenses, outbox

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Only these paths are labels; anything else counts as "other", so that a
# scan of random URLs cannot grow the metrics without bound.
ROUTES = frozenset(
    {
        "/bi_api/v1/services/partner/create-license",
        "/create-license",
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

    def collect(self) -> Iterator[GaugeMetricFamily]:
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


class Metrics:
    """The metrics of one serving process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "famprov_http_requests",
            "HTTP requests answered, by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "famprov_http_request_duration_seconds",
            "Time to answer an HTTP request, by route",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.grants = Counter(
            "famprov_grants",
            "Answers of the partner endpoint, by outcome",
            ["outcome"],
            registry=self.registry,
        )

    def watch_store(self, engine: Engine) -> None:
        self.registry.register(StoreCollector(engine))

    def observe(
        self, path: str, status: int, seconds: float, outcome: str | None
    ) -> None:
        route = path if path in ROUTES else "other"
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if outcome is not None and "create-license" in route:
            self.grants.labels(outcome).inc()


async def endpoint(request: Request) -> Response:
    metrics: Metrics = request.app.state.metrics
    body = await asyncio.to_thread(generate_latest, metrics.registry)
    return Response(body, media_type=CONTENT_TYPE)
