"""``acetrack serve``: the HTTP API as a process: bind, say what it serves (and warn when anyone
can reach it with no token), run until cancelled. The app itself is ``worker.http``."""

from __future__ import annotations

import asyncio
import ipaddress
import logging

from aiohttp import web

from config import Settings
from worker.connect import create_redis
from worker.errors import ConfigError
from worker.http import api_from_settings, create_app
from worker.httpcore import listen

logger = logging.getLogger(__name__)


def open_to_the_network(settings: Settings) -> bool:
    """No ``ACETRACK_HTTP_TOKEN`` and a host other than loopback: anyone who reaches it can enqueue,
    cancel and read every record."""
    token = settings.http_token.get_secret_value() if settings.http_token else ""
    if token or settings.http_host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(settings.http_host).is_loopback
    except ValueError:  # a host name: whatever it names may be reachable
        return True


async def serve(settings: Settings) -> None:
    """Serve the API on ``ACETRACK_HTTP_HOST:ACETRACK_HTTP_PORT`` until cancelled."""
    if settings.redis_url is None:
        raise ConfigError("ACETRACK_REDIS_URL is not set; e.g. redis://localhost:6379/0")
    redis = create_redis(settings.redis_url)
    runner = web.AppRunner(create_app(api_from_settings(settings, redis)), access_log=None)
    await runner.setup()
    try:
        await listen(runner, settings.http_host, settings.http_port, "ACETRACK_HTTP_PORT", "ACETRACK_HTTP_HOST")
        logger.info("acetrack API listening on http://%s:%s", settings.http_host, settings.http_port)
        if open_to_the_network(settings):
            logger.warning(
                "the API answers anyone who can reach %s:%s, with no token: set ACETRACK_HTTP_TOKEN "
                "(or, outside a container, ACETRACK_HTTP_HOST=127.0.0.1 to serve this machine only)",
                settings.http_host,
                settings.http_port,
            )
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await redis.aclose()
