"""Claims: which ids a poll takes, the token's shared rate budget, back-off, pauses, and the
lifetimes a service's finished tasks taught."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from worker import codec
from worker.models import DEFAULT_TOKEN, Sample, TaskState
from worker.store.base import StoreBase
from worker.store.codecs import LIFETIME_SAMPLES, SCHED_POLLED, PendingTask, parse_sample, pending_rows, record_text
from worker.store.keys import queue_member

#: a service's back-off failure count is forgotten after an hour without failures
BACKOFF_MEMORY_MS = 3_600_000
#: requests are spaced 2% wider than the budget, so network jitter never bunches them over it
RATE_HEADROOM = 1.02


class Learning(NamedTuple):
    """A service's recently finished tasks (newest first), its callback counts (``callbacks_key``)
    and how many of its tasks are pending."""

    samples: list[Sample]
    finished: int
    called: int
    pending: int


class Claimed(NamedTuple):
    """A claimed batch: its claim id, the ids, and when the next claim of the queue can find any."""

    claim_id: str
    ids: list[str]
    #: 0: more ids are due now (the batch is full) and the rate budget allows another claim; else ms
    #: until both hold: the next id falls due and the budget allows it (-1: none left)
    next_ms: int = 0
    #: the still-pending ones among ``ids`` as read in the claim (None: not read)
    pending: dict[str, PendingTask] | None = None
    #: how long the oldest id still due after this batch has been due (ms; 0: none is): how far claims
    #: of the queue run behind
    late_ms: int = 0


@dataclass(frozen=True, slots=True)
class Wait:
    """A claim that took nothing: how long until one can, and why."""

    #: ms until a claim can take something (-1: no id is due at all)
    ms: int
    #: 'paused', 'backoff', 'rate' (refused), 'empty' (none pending), 'later' (no id is due yet) or
    #: 'taken' (none is due: another worker took the ids due when the claimer planned)
    why: str


class ClaimOps(StoreBase):
    """Claiming due ids, spending the rate budget, backing off and pausing."""

    async def claim(
        self,
        service: str,
        token: str,
        now_ms: int,
        *,
        batch: int,
        coalesce_ms: int,
        lease_ms: int,
        rate_rps: float,
        min_repoll_ms: int = 0,
        early_ms: int = 0,
        worker: str = "",
        planned_ms: int = 0,
    ) -> Claimed | Wait:
        """Claim a batch of due ids: returns the ``Claimed`` batch, or the ``Wait`` until one can be.

        Ids due within ``early_ms`` count as due now. Ids due within ``coalesce_ms`` top the batch
        up, except those polled less than ``min_repoll_ms`` ago. ``worker`` claims, told that an id
        falls due at ``planned_ms`` (0: a look): a ``Wait`` says 'taken' when another worker claimed
        the queue since then.
        """
        claim_id = uuid.uuid4().hex
        emission_ms = RATE_HEADROOM * 1000.0 / rate_rps
        keys = [
            self.due_key(service, token),
            self.backoff_key(service, token),
            self.paused_key(token),
            self.rate_key(token),
            self.claimer_key(service, token),
        ]
        args: list[Any] = [
            now_ms,
            coalesce_ms,
            lease_ms,
            batch,
            claim_id,
            emission_ms,
            0,  # no burst: requests are spaced evenly, so no 1 s window holds more than the budget
            self.task_prefix(service),
            min_repoll_ms,
            early_ms,
            worker,
            planned_ms,
            SCHED_POLLED,
        ]
        reply = await self.scripts["claim"](keys=keys, args=args)
        if int(reply[0]) == 0:
            return Wait(int(reply[1]), reply[2])
        ids: list[str] = reply[2]
        return Claimed(claim_id, ids, int(reply[1]), pending_rows(ids, reply[3]), int(reply[4]))

    async def spend(self, token: str, now_ms: int, rate_rps: float) -> int:
        """Spend one extra request of the token's budget; 0 when spent, else ms to wait."""
        emission_ms = RATE_HEADROOM * 1000.0 / rate_rps
        args: list[Any] = [now_ms, emission_ms, 0]
        return int(await self.scripts["spend"](keys=[self.rate_key(token)], args=args))

    async def load_pending(self, service: str, ids: Iterable[str]) -> dict[str, PendingTask]:
        """The still-pending tasks among ``ids`` with their scheduling fields."""
        ids = list(ids)
        rows = await self.scripts["load"](keys=[self.task_key(service, i) for i in ids]) if ids else []
        return pending_rows(ids, rows)

    async def hint(self, service: str, task_id: str, now_ms: int) -> str:
        """Make a pending task due now (the upstream called back: it may be done), unless a poll holds
        it. Returns 'hinted', 'due', 'in_flight', 'finished', or 'untracked' (acetrack has no such task)."""
        raw = await self.redis.hget(self.task_key(service, task_id), "record")  # type: ignore[misc]
        if raw is None:
            return "untracked"
        token = str(codec.loads(record_text(raw)).get("token") or DEFAULT_TOKEN)
        keys = [self.task_key(service, task_id), self.due_key(service, token), self.callbacks_key(service)]
        args: list[Any] = [task_id, now_ms, self.wake_channel, queue_member(service, token)]
        return str(await self.scripts["hint"](keys=keys, args=args))

    async def release(self, service: str, token: str, claim_id: str, ids: Iterable[str], due_ms: int) -> int:
        """Give claimed ids back, due at ``due_ms``; returns how many were still held. Announced on
        the wake channel when they become the queue's soonest."""
        ids = list(ids)
        if not ids:
            return 0
        member = queue_member(service, token)
        keys = [self.due_key(service, token), *(self.task_key(service, i) for i in ids)]
        args: list[Any] = [claim_id, due_ms, self.wake_channel, member, *ids]
        return int(await self.scripts["release"](keys=keys, args=args))

    async def back_off(self, service: str, token: str, until_ms: int) -> None:
        """Hold every poll of (service, token) until ``until_ms``."""
        key = self.backoff_key(service, token)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, "until_ms", str(until_ms))
            pipe.hincrby(key, "failures", 1)
            pipe.pexpire(key, BACKOFF_MEMORY_MS)
            await pipe.execute()

    async def backoff_failures(self, service: str, token: str) -> int:
        """Consecutive failures behind the current back-off of (service, token)."""
        return int(await self.redis.hget(self.backoff_key(service, token), "failures") or 0)  # type: ignore[misc]

    async def pause_token(self, token: str, pause_ms: int, reason: str) -> None:
        """Stop every poll with ``token`` for ``pause_ms`` (a bad or used-up token)."""
        await self.redis.set(self.paused_key(token), reason, px=pause_ms)

    async def paused_tokens(self, tokens: Iterable[str]) -> dict[str, str]:
        """Which of ``tokens`` are paused, with the reason."""
        names = list(tokens)
        values = await self.redis.mget([self.paused_key(t) for t in names]) if names else []
        return {t: v for t, v in zip(names, values, strict=True) if v}

    async def lifetime_samples(self, service: str) -> list[Sample]:
        """Recently finished tasks of ``service`` (newest first), as the scheduler learns from them."""
        raw = await self.redis.lrange(self.lifetimes_key(service), 0, LIFETIME_SAMPLES - 1)  # type: ignore[misc]
        return [parse_sample(v) for v in raw]

    async def callback_counts(self, service: str) -> tuple[int, int]:
        """The service's recent finishes and how many of those tasks the upstream called back for
        (both halved now and then: ``CALLBACK_WINDOW``)."""
        finished, called = await self.redis.hmget(self.callbacks_key(service), ["finished", "called"])  # type: ignore[misc]
        return int(finished or 0), int(called or 0)

    async def learning(self, service: str) -> Learning:
        """What the scheduler learns a service's cadence from, in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lrange(self.lifetimes_key(service), 0, LIFETIME_SAMPLES - 1)
            pipe.hmget(self.callbacks_key(service), ["finished", "called"])
            pipe.zcard(self.index_key(service, TaskState.PENDING))
            raw, (finished, called), pending = await pipe.execute()
        return Learning([parse_sample(v) for v in raw], int(finished or 0), int(called or 0), int(pending))

    async def lifetimes_s(self, service: str) -> list[float]:
        """Recent lifetimes (enqueue to terminal) of succeeded tasks of ``service``, in seconds."""
        return [s.lifetime_s for s in await self.lifetime_samples(service) if s.ok]

    async def token_pauses(self) -> dict[str, tuple[str, int]]:
        """Every token paused in Redis (by any worker, running or not): (reason, ms left of the pause)."""
        keys = [k async for k in self.redis.scan_iter(match=self.paused_key("*"), count=100)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(key)
                pipe.pttl(key)
            replies = await pipe.execute()
        start = len(self.paused_key(""))
        rows = zip(keys, replies[::2], replies[1::2], strict=True)
        # a key that expired between the scan and the read has no reason and a negative ttl
        return {key[start:]: (reason, int(left_ms)) for key, reason, left_ms in rows if reason and left_ms > 0}

    async def resume_token(self, token: str, now_ms: int, slack_ms: int = 60_000) -> bool:
        """Lift ``token``'s pause: its ids due before the pause would have ended (give or take
        ``slack_ms``: the pause's TTL runs on Redis's clock, due times on the workers') fall due now,
        and the workers' claim loops are told (the wake channel). False when it was not paused."""
        left_ms = int(await self.redis.pttl(self.paused_key(token)))
        if left_ms <= 0:
            return False
        services = [service for service, each in await self.queues() if each == token]
        # a paused token's queues are not claimed, so these ids are not in any worker's hands
        until_ms = now_ms + left_ms + slack_ms
        held = [await self.redis.zrangebyscore(self.due_key(s, token), now_ms, until_ms) for s in services]
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.paused_key(token))
            for service, ids in zip(services, held, strict=True):
                if ids:  # XX: an id that finished meanwhile is not put back
                    pipe.zadd(self.due_key(service, token), dict.fromkeys(ids, now_ms), xx=True)
                pipe.publish(self.wake_channel, f"{queue_member(service, token)}|{now_ms}")
            replies = await pipe.execute()
        return bool(replies[0])
