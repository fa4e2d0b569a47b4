"""A real HTTP endpoint for the tests: webhooks and callbacks are sent to it over loopback sockets.

``async with serve(...) as receiver`` runs an aiohttp app (``TestServer``) on a free 127.0.0.1 port. It
records every request as a :class:`Hit`, verifies Standard Webhooks signatures when given the secret, and
answers from a per-path script of :class:`Answer` (status, headers, a delay), else its default answer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


@dataclass(frozen=True)
class Answer:
    """One scripted reply: its status and headers, after ``sleep_s``; the body is ``json`` when given, else ok."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    sleep_s: float = 0.0
    json: Any = None


@dataclass
class Hit:
    """One request the receiver got, with the result of verifying its signature."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    at_s: float  # loop time on arrival: the clock of the simulator's log
    peer_port: int  # the sender's TCP port
    payload: dict[str, Any] | None = None  # the verified JSON body; None when not verified
    error: str | None = None  # why verification failed
    cut_at_s: float | None = None  # loop time when the sender hung up before the answer (``cuts=True``)

    @property
    def webhook_id(self) -> str:
        """The ``webhook-id`` header ("" without one)."""
        return self.headers.get("webhook-id", "")

    @property
    def task_id(self) -> str | None:
        """The task of a verified webhook; None when its signature did not verify."""
        return None if self.payload is None else str(self.payload["data"]["id"])

    def json(self) -> Any:
        """The body, parsed as JSON."""
        return json.loads(self.body)


class Receiver:
    """Records every request; answers per path from a script, then with ``default``.

    Args:
        secret: verify each request as a Standard Webhook signed with it (``Hit.payload``, ``Hit.error``).
        default: the answer when a path's script is used up.
        cuts: note when a sender hangs up before its answer (``Hit.cut_at_s``). Off unless asked for: the
            handler then catches the cancellation, and a worker stopped with requests in flight (test_webhooks'
            slow destination) was seen to leave an unclosed redis pipeline to the garbage collector then.
    """

    def __init__(self, secret: str | None = None, default: Answer | None = None, cuts: bool = False) -> None:
        self.secret, self.cuts = secret, cuts
        self.default = default or Answer()
        self.url = ""
        self.port = 0
        self.hits: list[Hit] = []
        self.script: dict[str, list[Answer]] = {}
        self._held: tuple[asyncio.Future[Hit], float] | None = None

    def answer(self, path: str, *answers: Answer) -> None:
        """Answer the next requests to ``path`` with ``answers``, in order."""
        self.script.setdefault(path, []).extend(answers)

    def at(self, path: str) -> list[Hit]:
        """The requests made to ``path``."""
        return [h for h in self.hits if h.path == path]

    def hold_next(self, hold_s: float) -> asyncio.Future[Hit]:
        """Hold the next request open ``hold_s`` (instead of its answer's delay); the future has its hit."""
        held: asyncio.Future[Hit] = asyncio.get_running_loop().create_future()
        self._held = (held, hold_s)
        return held

    async def _sleep_noting_a_cut(self, hit: Hit, sleep_s: float) -> None:
        try:
            await asyncio.sleep(sleep_s)
        except asyncio.CancelledError:  # the sender hung up: TestServer cancels the handler
            hit.cut_at_s = asyncio.get_running_loop().time()
            raise

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Record the request, then answer it (aiohttp cancels this when the sender hangs up)."""
        loop = asyncio.get_running_loop()
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        hit = Hit(
            request.method,
            request.path,
            {k.lower(): v for k, v in request.headers.items()},
            body,
            loop.time(),
            peer[1] if peer else 0,
        )
        if self.secret is not None:
            try:
                hit.payload = Webhook(self.secret).verify(body, hit.headers)
            except WebhookVerificationError as e:
                hit.error = str(e)
        self.hits.append(hit)
        queue = self.script.get(request.path)
        answer = queue.pop(0) if queue else self.default
        sleep_s = answer.sleep_s
        if self._held is not None and not self._held[0].done():
            self._held[0].set_result(hit)
            sleep_s = self._held[1]
        if sleep_s:
            await (self._sleep_noting_a_cut(hit, sleep_s) if self.cuts else asyncio.sleep(sleep_s))
        if answer.json is not None:
            return web.json_response(answer.json, status=answer.status, headers=dict(answer.headers))
        return web.Response(status=answer.status, headers=dict(answer.headers), text="ok")


@asynccontextmanager
async def serve(
    secret: str | None = None, default: Answer | None = None, cuts: bool = False
) -> AsyncIterator[Receiver]:
    """A :class:`Receiver` (arguments as there) on a free loopback port, any method and path, until the block ends."""
    receiver = Receiver(secret, default, cuts)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", receiver.handle)
    async with TestServer(app, host="127.0.0.1") as server:
        receiver.url = str(server.make_url("")).rstrip("/")
        receiver.port = int(server.port or 0)
        yield receiver
