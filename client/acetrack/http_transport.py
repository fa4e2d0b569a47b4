"""The client over acetrack's HTTP API (``acetrack serve``): ``POST /tasks``, ``GET /tasks/{service}/{id}``
with ``?wait_s=`` long polls, ``DELETE`` to cancel, and the server-sent ``GET /events``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Collection
from typing import Any, NoReturn
from urllib.parse import quote

import aiohttp

from acetrack.errors import AcetrackError, InvalidInput, NotFound, Timeout, Unauthorized, Unavailable
from acetrack.records import Event, Record
from acetrack.rules import Intake
from acetrack.sse import messages

#: the longest ``?wait_s=`` the API accepts; a longer wait is several long polls
MAX_WAIT_S = 60.0
#: connecting, and reading an answer that is not a long poll
CONNECT_S = 10.0
READ_S = 30.0
#: how long an ``/events`` connection may stay silent (the server sends ``: ping`` every 15 s by default)
EVENTS_READ_S = 90.0
#: pause before ``/events`` is opened again after a response ended
RECONNECT_S = 0.5


class HttpTransport:
    """The five operations over the HTTP API at ``base_url``.

    Args:
        base_url: e.g. ``http://localhost:8080``.
        token: the API's ``ACETRACK_HTTP_TOKEN``, if it has one.
        session: a ready ``aiohttp.ClientSession`` to use (not closed here); None: one is made on first use.
    """

    def __init__(self, base_url: str, token: str | None = None, session: aiohttp.ClientSession | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"accept": "application/json"}
        if token:
            self.headers["authorization"] = f"Bearer {token}"
        self._session, self._owned = session, session is None

    def _client(self) -> aiohttp.ClientSession:
        # made inside a coroutine: aiohttp binds a session to the running loop
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(connect=CONNECT_S, sock_read=READ_S))
        return self._session

    def _task_url(self, service: str, task_id: str) -> str:
        return f"{self.base_url}/tasks/{quote(service, safe='')}/{quote(task_id, safe='')}"

    async def _call(self, method: str, url: str, *, read_s: float = READ_S, **kwargs: Any) -> tuple[int, Any]:
        timeout = aiohttp.ClientTimeout(connect=CONNECT_S, sock_read=read_s)
        try:
            async with self._client().request(method, url, headers=self.headers, timeout=timeout, **kwargs) as resp:
                status, body = resp.status, _json_or_none(await resp.read())
        except (aiohttp.ClientError, TimeoutError) as e:
            raise Unavailable(f"acetrack's API at {self.base_url} did not answer {method} {url}: {e!r}") from e
        if 200 <= status < 300 and not isinstance(body, dict):
            raise AcetrackError(f"{method} {url} answered {status} without a JSON object: is it acetrack's API?")
        return status, body

    async def enqueue(self, intake: Intake) -> Record | None:
        """``POST /tasks``; the stored record (the first one, for a task tracked already)."""
        status, body = await self._call("POST", f"{self.base_url}/tasks", json=intake.body())
        if status != 202:
            _raise(status, body, f"enqueue of {intake.service}/{intake.id}")
        return Record.from_dict(body["tasks"][0])

    async def get(self, service: str, task_id: str) -> Record | None:
        """``GET /tasks/{service}/{id}``; None on 404."""
        status, body = await self._call("GET", self._task_url(service, task_id))
        if status == 404:
            return None
        if status != 200:
            _raise(status, body, f"get of {service}/{task_id}")
        return Record.from_dict(body)

    async def wait(self, service: str, task_id: str, timeout_s: float) -> Record:
        """Long polls (``?wait_s=``) until the record is terminal or ``timeout_s`` passed."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout_s
        while True:
            left_s = give_up - loop.time()
            wait_s = round(min(left_s, MAX_WAIT_S), 3)
            if wait_s <= 0:
                state = (await self.get(service, task_id) or Record(service, task_id)).state
                raise Timeout(f"task {service}/{task_id} did not finish within {timeout_s:g}s (still {state})")
            url = self._task_url(service, task_id)
            status, body = await self._call("GET", url, params={"wait_s": str(wait_s)}, read_s=wait_s + READ_S)
            if status == 404:
                raise NotFound(f"task {service}/{task_id} is not tracked; enqueue it first")
            if status != 200:
                _raise(status, body, f"wait for {service}/{task_id}")
            record = Record.from_dict(body)
            if record.terminal:
                # a task that ends during the long poll comes back as its event carried it, without the
                # raw upstream answer: the stored record has it (as over Redis)
                return record if record.response is not None else await self.get(service, task_id) or record

    async def cancel(self, service: str, task_id: str) -> Record:
        """``DELETE /tasks/{service}/{id}``; a task that had finished already keeps (and returns) its record."""
        status, body = await self._call("DELETE", self._task_url(service, task_id))
        if status == 409:
            record = await self.get(service, task_id)
            if record is not None:
                return record
        if status != 200:
            _raise(status, body, f"cancel of {service}/{task_id}")
        return Record.from_dict(body)

    async def events(
        self, after: str | None, services: Collection[str], ids: Collection[str], types: Collection[str]
    ) -> AsyncIterator[Event]:
        """``GET /events``, filtered by the server; reconnects with ``Last-Event-ID`` when a response ends."""
        params = {k: ",".join(v) for k, v in (("service", services), ("id", ids), ("type", types)) if v}
        last = after
        while True:
            headers = {**self.headers, "accept": "text/event-stream"}
            if last is not None:
                headers["last-event-id"] = last
            async for event in self._stream(params, headers):
                last = event.entry_id
                yield event
            await asyncio.sleep(RECONNECT_S)

    async def _stream(self, params: dict[str, str], headers: dict[str, str]) -> AsyncIterator[Event]:
        timeout = aiohttp.ClientTimeout(connect=CONNECT_S, sock_read=EVENTS_READ_S)
        url = f"{self.base_url}/events"
        try:
            async with self._client().get(url, params=params, headers=headers, timeout=timeout) as resp:
                if resp.status != 200:
                    _raise(resp.status, _json_or_none(await resp.read()), "GET /events")
                async for message in messages(resp.content):
                    if message.id is not None:
                        yield Event.from_dict(message.id, json.loads(message.data))
        except (aiohttp.ClientConnectionError, TimeoutError) as e:
            # a stream cut mid-way resumes from the last event (the caller reconnects); a refused one fails
            if isinstance(e, aiohttp.ClientConnectorError):
                raise Unavailable(f"acetrack's API at {self.base_url} cannot be reached: {e!r}") from e

    async def aclose(self) -> None:
        """Close the session if this transport made it."""
        if self._owned and self._session is not None:
            await self._session.close()
            self._session = None


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:  # e.g. a proxy's HTML error page
        return None


def _raise(status: int, body: Any, what: str) -> NoReturn:
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    message = str(error.get("message") or f"HTTP {status}")
    if status == 400:
        # "tasks[0].meta" in a POST /tasks answer: the field is the part after the item
        field = str(error.get("field") or "request").rpartition(".")[2]
        raise InvalidInput(field, message)
    if status == 401:
        raise Unauthorized(f"{what}: {message}; pass the API's ACETRACK_HTTP_TOKEN as token")
    if status == 404:
        raise NotFound(f"{what}: {message}")
    if status >= 500:
        raise Unavailable(f"{what}: HTTP {status}: {message}; try again shortly")
    raise AcetrackError(f"{what}: HTTP {status}: {message}")
