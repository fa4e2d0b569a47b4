"""Prometheus metrics of a worker (and of the API process), via ``prometheus-client``.

Metric objects live here; other modules only call ``.inc()``/``.observe()`` on them.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

OBSERVATIONS = Counter(
    "acetrack_observations_total", "Task statuses observed upstream (one id in one poll)", ["service"]
)
BATCH_SIZE = Histogram(
    "acetrack_batch_size", "Ids per retrieve_batch request", buckets=(1, 2, 5, 10, 20, 30, 40, 50, 100, 200)
)
REQUESTS = Counter("acetrack_upstream_requests_total", "Tasks API requests by answer", ["service", "code"])
REQUEST_SECONDS = Histogram("acetrack_upstream_request_seconds", "Tasks API request latency", ["service"])
BACKOFFS = Counter("acetrack_backoffs_total", "Service back-offs after 429/5xx/network errors", ["service"])
TERMINAL = Counter("acetrack_terminal_total", "Tasks finished by acetrack", ["service", "state", "reason"])
DETECTION_SECONDS = Histogram(
    "acetrack_detection_seconds",
    "Upstream finished_at to the terminal write in Redis",
    ["service"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300),
)
DELIVERIES = Counter("acetrack_deliveries_total", "Hook and webhook delivery tries by outcome", ["kind", "outcome"])
DUPLICATES = Counter(
    "acetrack_delivery_duplicates_total",
    "Delivery tries that may repeat one a dead worker made, or were skipped as done",
)
INTAKE = Counter("acetrack_intake_total", "Intake stream entries by result", ["result"])
TASKS = Gauge("acetrack_tasks", "Tasks tracked in Redis by service and state", ["service", "state"])


async def metrics_handler(_: web.Request) -> web.Response:
    """``GET /metrics`` in the Prometheus text format."""
    return web.Response(body=generate_latest(), headers={"content-type": CONTENT_TYPE_LATEST})


async def metrics_runner() -> web.AppRunner:
    """An app serving ``/metrics``, set up but not listening yet: the caller binds it and cleans it up."""
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    return runner
