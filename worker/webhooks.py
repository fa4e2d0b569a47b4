"""Signed HTTP webhooks (DESIGN.md §4): screening, the Standard Webhooks envelope, one attempt.

Each (event, URL) pair is one delivery. Its ``webhook-id`` is the event's ``event_id`` on every
try and replay; the signature is made fresh (new timestamp) each time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from standardwebhooks import Webhook

from worker.api import parse_retry_after
from worker.delivery import Delivery, Try
from worker.errors import InvalidInput
from worker.events import event_data

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 15.0
#: a worker without the webhook secret hands a delivery back for this long, for a worker that has it
NO_SECRET_RETRY_S = 60.0

Resolver = Callable[[str], Awaitable[list[str]]]


def is_forbidden_address(address: str) -> bool:
    """True for loopback, link-local, private, reserved, multicast and unspecified addresses."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    return bool(
        ip.is_loopback or ip.is_link_local or ip.is_private or ip.is_reserved or ip.is_multicast or ip.is_unspecified
    )


async def system_resolver(host: str) -> list[str]:
    """Every address ``host`` resolves to."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


class Unresolvable(InvalidInput):
    """A webhook host that does not resolve (now): refused at enqueue, but at delivery a failed try
    retried on the schedule like any connection error (DNS can fail for a while)."""


async def screen(
    url: str, allow_hosts: Collection[str], resolver: Resolver = system_resolver, *, name: str = "callback_url"
) -> None:
    """Refuse a webhook URL that is not http(s) or whose host resolves to a non-public address.

    Args:
        url: the URL.
        allow_hosts: host names (as written in URLs) let through unresolved.
        resolver: host name to addresses.
        name: what the messages call the URL (``callback_url`` at enqueue; at delivery it may be one
            of ``ACETRACK_WEBHOOK_URLS``).

    Raises:
        Unresolvable: when the host does not resolve.
        InvalidInput: on field ``callback_url``, saying why and how to allow the host.
    """
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
    except ValueError:
        host = ""
    if not host or parts.scheme not in ("http", "https"):
        raise InvalidInput("callback_url", f"{name} {url[:80]!r} must be an http:// or https:// URL")
    if host in {h.lower() for h in allow_hosts}:
        return
    try:
        addresses = await resolver(host)
    except OSError as e:
        raise Unresolvable("callback_url", f"{name} host {host!r} does not resolve ({e})") from e
    bad = [a for a in addresses if is_forbidden_address(a)]
    if bad or not addresses:
        raise InvalidInput(
            "callback_url",
            f"{name} host {host!r} resolves to a private or local address {bad[:1]!r}; "
            "add the host to ACETRACK_WEBHOOK_ALLOW_HOSTS to allow it",
        )


def envelope(event: dict[str, Any], now_ms: int) -> str:
    """The Standard Webhooks body: ``{"type", "timestamp", "data"}``, ``data`` the record of a task's
    end, else what changed (``events.event_data``)."""
    timestamp = datetime.fromtimestamp(now_ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")
    body = {"type": event["type"], "timestamp": timestamp, "data": event_data(event)}
    return json.dumps(body, separators=(",", ":"))


def signed_headers(secret: str, event_id: str, now_ms: int, payload: str) -> dict[str, str]:
    """``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` for one send."""
    sent_at = datetime.fromtimestamp(now_ms // 1000, tz=UTC)
    return {
        "content-type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(now_ms // 1000),
        "webhook-signature": Webhook(secret).sign(event_id, sent_at, payload),
    }


@dataclass(frozen=True)
class WebhookConfig:
    """What a webhook attempt needs from the settings."""

    secret: str | None
    schedule_s: Sequence[float]
    allow_hosts: Collection[str] = ()
    timeout_s: float = REQUEST_TIMEOUT_S


async def _send(
    session: aiohttp.ClientSession, url: str, payload: str, headers: dict[str, str], timeout_s: float
) -> tuple[int | None, float | None, str | None]:
    """POST once: (status, retry_after_s, error); never follows redirects."""
    try:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with session.post(url, data=payload, headers=headers, allow_redirects=False, timeout=timeout) as resp:
            await resp.read()
            retry_after = parse_retry_after(resp.headers.get("Retry-After"), datetime.now(UTC).timestamp())
            error = None if 200 <= resp.status < 300 else f"HTTP {resp.status}"
            return resp.status, retry_after, error
    except (TimeoutError, aiohttp.ClientError) as e:
        return None, None, f"{type(e).__name__}: {e}"


async def _screen_and_send(
    session: aiohttp.ClientSession,
    config: WebhookConfig,
    secret: str,
    delivery: Delivery,
    now_ms: int,
    resolver: Resolver,
) -> Try:
    """Screen the URL again (what its host resolves to may have changed), then POST once. A host
    that does not resolve is a failed try, as a refused connection is; a refused URL (not http(s),
    a private or local address) is dead at once."""
    try:
        await screen(delivery.url, config.allow_hosts, resolver, name="webhook URL")
    except Unresolvable as e:
        return Try(e.message)
    except InvalidInput as e:
        return Try(e.message, dead_reason="refused")
    payload = envelope(delivery.event, now_ms)
    headers = signed_headers(secret, delivery.event_id, now_ms, payload)
    status, retry_after_s, error = await _send(session, delivery.url, payload, headers, config.timeout_s)
    return Try(error, status, retry_after_s)


async def attempt(
    session: aiohttp.ClientSession,
    config: WebhookConfig,
    delivery: Delivery,
    now_ms: int,
    *,
    disabled: bool = False,
    resolver: Resolver = system_resolver,
) -> Try | None:
    """Send one delivery once; None when this worker cannot sign it (no try is spent: another
    worker may have the secret). A URL disabled after a 410 is dead at once."""
    if disabled:
        return Try("URL disabled after a 410 Gone; run 'acetrack hooks enable URL'", dead_reason="gone")
    if not config.secret:
        logger.warning(
            "webhook delivery %s handed back: this worker has no ACETRACK_WEBHOOK_SECRET (whsec_...) to sign it",
            delivery.delivery_id,
        )
        return None
    return await _screen_and_send(session, config, config.secret, delivery, now_ms, resolver)
