"""The scheduler's loops wait for work: each sleeps until the soonest thing it knows falls due."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from support import Backend, require_real_redis

from worker.cadence import first_poll_ms
from worker.claim_loop import (
    CLAIM_IDLE_S,
    CLAIM_MIN_IDLE_S,
    CLAIM_SLACK_MS,
    CLAIM_UNSUBSCRIBED_IDLE_S,
    Cadence,
    QueuePlan,
)
from worker.connect import create_redis
from worker.intake import EnqueueRequest
from worker.loops import INTAKE_BLOCK_MS, RESUBSCRIBE_S
from worker.scheduler import Scheduler
from worker.store import Claimed, Store, Wait

NOW_MS = 1_700_000_000_000


class Recorder:
    """A ``JobQueue`` that only remembers what it was handed."""

    def __init__(self) -> None:
        self.polls: list[list[str]] = []
        self.deliveries: list[str] = []

    async def poll(self, service: str, token: str, claimed: Claimed) -> None:
        self.polls.append(list(claimed.ids))

    async def deliver(self, delivery_id: str, due_ms: int, leased_until_ms: int) -> None:
        self.deliveries.append(delivery_id)


class CountingStore(Store):
    """A store that notes the time of every claim it is asked for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asked: list[int] = []

    async def claim(self, service: str, token: str, now_ms: int, **kwargs: Any) -> Claimed | Wait:
        self.asked.append(now_ms)
        return await super().claim(service, token, now_ms, **kwargs)


def scheduler(store: Store, clock_ms: list[int], **cadence: Any) -> tuple[Scheduler, Recorder]:
    queue = Recorder()
    return Scheduler(store, queue, lambda: clock_ms[0], Cadence(**cadence)), queue


async def register(store: Store, task_id: str, first_poll_s: float) -> None:
    await store.register(
        EnqueueRequest("suno", task_id), NOW_MS, deadline_s=600, first_due_ms=first_poll_ms(NOW_MS, first_poll_s)
    )


async def test_a_partial_batch_tells_the_loop_when_to_claim_next(backend: Backend) -> None:
    store = backend.store()
    await register(store, "soon", 3)
    await register(store, "later", 9)
    due = dict(await backend.redis.zrange(store.due_key("suno", "default"), 0, -1, withscores=True))
    clock_ms = [int(due["soon"])]
    sched, queue = scheduler(store, clock_ms, coalesce_ms=0, claim_idle_ms=60_000)
    sleep_s = await sched.claims.step()
    assert queue.polls == [["soon"]]
    # one claim: the partial batch's answer said when "later" falls due, no second claim was needed
    assert sched.counters["claims"] == 1
    assert sleep_s == pytest.approx((due["later"] - clock_ms[0]) / 1000)


async def test_a_full_batch_says_whether_more_are_due_so_no_claim_comes_back_empty(backend: Backend) -> None:
    store = CountingStore(backend.redis)
    asked = store.asked
    for task_id in ("a", "b"):
        await register(store, task_id, 3)
    await register(store, "later", 9)
    due = dict(await backend.redis.zrange(store.due_key("suno", "default"), 0, -1, withscores=True))
    assert due["a"] == due["b"]
    clock_ms = [int(due["a"])]
    sched, queue = scheduler(store, clock_ms, batch_size=1, coalesce_ms=0, claim_idle_ms=60_000, rate_limit_rps=1e3)
    sleep_s = await sched.claims.step()
    # "a" filled a batch and "b" is due too, but the rate budget allows the next request only 1.02 ms
    # on: the claim said so, and no claim is sent for the budget to refuse
    assert queue.polls == [["a"]] and len(asked) == 1 and sleep_s == pytest.approx(0.002)
    clock_ms[0] += 2
    sleep_s = await sched.claims.step()
    # "b" filled a batch too, and nothing else is due: the claim said when, no claim came back empty
    assert queue.polls == [["a"], ["b"]] and len(asked) == 2
    assert sleep_s == pytest.approx((due["later"] - clock_ms[0]) / 1000)


async def test_an_expected_due_time_cuts_the_sleep_even_while_claiming(backend: Backend) -> None:
    clock_ms = [NOW_MS]

    class ExpectingStore(Store):
        async def claim(self, *args: Any, **kwargs: Any) -> Claimed | Wait:
            got = await super().claim(*args, **kwargs)
            sched.expect("suno", "default", NOW_MS + 200)  # a poll finished meanwhile: a task due 200 ms on
            return got

    store = ExpectingStore(backend.redis)
    await register(store, "t1", 30)
    sched, _ = scheduler(store, clock_ms, claim_idle_ms=5_000)
    assert await sched.claims.step() == pytest.approx(0.2)
    clock_ms[0] += 50  # woken early (the nudge): it re-plans without asking Redis
    assert await sched.claims.step() == pytest.approx(0.15)
    assert sched.counters["claims"] == 0


async def test_a_timer_that_fires_a_few_ms_early_still_claims(backend: Backend) -> None:
    store = CountingStore(backend.redis)
    asked = store.asked
    await register(store, "t1", 3)
    due_ms = int((await backend.redis.zrange(store.due_key("suno", "default"), 0, 0, withscores=True))[0][1])
    clock_ms = [due_ms - 2000]
    sched, queue = scheduler(store, clock_ms, coalesce_ms=0, claim_idle_ms=5_000)
    assert await sched.claims.step() == pytest.approx(2.0)
    clock_ms[0] = due_ms - CLAIM_SLACK_MS + 2  # uvloop rounds timers to whole ms
    await sched.claims.step()
    # it claimed at once: no other 3 ms sleep, and no claim that finds nothing and has to ask again
    assert len(asked) == 2 and queue.polls == [["t1"]]


async def test_a_worker_whose_due_ids_another_took_cedes_the_queue_until_a_look_finds_work(backend: Backend) -> None:
    store = backend.store()
    await register(store, "t1", 3)
    await register(store, "t2", 9)
    due = dict(await backend.redis.zrange(store.due_key("suno", "default"), 0, -1, withscores=True))
    clock_ms = [NOW_MS]
    (a, a_queue), (b, b_queue) = (scheduler(store, clock_ms, coalesce_ms=0, claim_idle_ms=60_000) for _ in "ab")
    for sched in (a, b):
        assert await sched.claims.step() == pytest.approx((due["t1"] - NOW_MS) / 1000)  # both plan for t1
    clock_ms[0] = int(due["t1"])
    await a.claims.step()
    assert a_queue.polls == [["t1"]] and not a.claims.plans[("suno", "default")].ceded
    # b wakes for t1 too and finds it taken: it cedes the queue, and looks only after its idle period
    assert await b.claims.step() == pytest.approx(60.0)
    plan = b.claims.plans[("suno", "default")]
    assert b_queue.polls == [] and plan.ceded
    assert plan.at_ms == clock_ms[0] + 60_000  # not t2's due time: a knows it, from its claim
    # a died: b's look finds t2 due and t1 back after a's lease, and takes the queue back
    clock_ms[0] += 60_000
    await b.claims.step()
    assert [sorted(ids) for ids in b_queue.polls] == [["t1", "t2"]] and not plan.ceded


async def test_a_plan_further_off_than_a_look_becomes_a_look_that_cedes_nothing(backend: Backend) -> None:
    store = CountingStore(backend.redis)
    await register(store, "t1", 30)
    due_ms = int((await backend.redis.zrange(store.due_key("suno", "default"), 0, 0, withscores=True))[0][1])
    clock_ms = [NOW_MS]
    sched, _ = scheduler(store, clock_ms, claim_idle_ms=1000)
    sched.expect("suno", "default", due_ms)  # a new queue announced, its first task due 15-30 s on
    assert await sched.claims.step() == pytest.approx(1.0) and store.asked == []
    clock_ms[0] += 1000
    assert await sched.claims.step() == pytest.approx(1.0)  # the look: nothing due, a look cedes nothing
    plan = sched.claims.plans[("suno", "default")]
    assert len(store.asked) == 1 and not plan.ceded
    clock_ms[0] -= 60_000  # the clock stepped back a minute: the plan is a look again, not a minute off
    assert await sched.claims.step() == pytest.approx(1.0) and plan.at_ms == clock_ms[0] + 1000


async def test_a_lone_worker_never_cedes_its_queue(backend: Backend) -> None:
    store = backend.store()
    for task_id, first_poll_s in (("t1", 3), ("t2", 9)):
        await register(store, task_id, first_poll_s)
    due = dict(await backend.redis.zrange(store.due_key("suno", "default"), 0, -1, withscores=True))
    clock_ms = [NOW_MS]
    sched, queue = scheduler(store, clock_ms, coalesce_ms=0, claim_idle_ms=60_000)
    await sched.claims.step()
    await backend.redis.zrem(store.due_key("suno", "default"), "t1")  # cancelled before it fell due
    clock_ms[0] = int(due["t1"])
    # the id it planned for is gone, but no other worker took it: it plans for t2, not a look
    assert await sched.claims.step() == pytest.approx((due["t2"] - clock_ms[0]) / 1000)
    assert not sched.claims.plans[("suno", "default")].ceded and queue.polls == []


async def test_a_ceded_queue_is_taken_back_by_its_own_polls_but_not_its_registrations(backend: Backend) -> None:
    sched, _ = scheduler(backend.store(), [NOW_MS])
    sched.claims.plans[("suno", "default")] = plan = QueuePlan(NOW_MS + 5000, ceded=True)
    await sched.intake.accept("1-0", {"service": "suno", "id": "new"})  # the worker it is ceded to learns of it
    assert plan.at_ms == NOW_MS + 5000
    # a batch the other worker claimed, polled here: only this worker knows when its ids fall due
    sched.expect("suno", "default", NOW_MS + 700)
    assert plan.at_ms == NOW_MS + 700 and not plan.ceded


async def test_a_registration_that_creates_nothing_plans_nothing(backend: Backend) -> None:
    store = backend.store()
    await register(store, "t1", 30)
    sched, _ = scheduler(store, [NOW_MS])
    await sched.intake.accept("1-0", {"service": "suno", "id": "t1"})  # already tracked: no first poll falls due
    assert ("suno", "default") not in sched.claims.plans and sched.counters["accepted"] == 1


async def test_a_new_queue_heard_of_during_the_claims_is_planned_for(backend: Backend) -> None:
    class AnnouncingStore(Store):
        async def claim(self, *args: Any, **kwargs: Any) -> Claimed | Wait:
            sched.expect("suno", "backup", NOW_MS + 300)  # announced while this claim was on its way
            return await super().claim(*args, **kwargs)

    store = AnnouncingStore(backend.redis)
    await register(store, "t1", 30)
    sched, _ = scheduler(store, [NOW_MS], claim_idle_ms=5_000)
    assert await sched.claims.step() == pytest.approx(0.3)


async def test_a_refused_claim_does_not_cede_the_queue(backend: Backend) -> None:
    store = backend.store()
    for task_id in ("t1", "t2"):
        await register(store, task_id, 3)
    due_ms = int((await backend.redis.zrange(store.due_key("suno", "default"), 0, 0, withscores=True))[0][1])
    clock_ms = [NOW_MS]
    kw = {"batch_size": 1, "coalesce_ms": 0, "claim_idle_ms": 60_000, "rate_limit_rps": 1.0}
    (a, a_queue), (b, b_queue) = (scheduler(store, clock_ms, **kw) for _ in "ab")
    for sched in (a, b):
        await sched.claims.step()
    clock_ms[0] = due_ms
    await a.claims.step()  # a takes t1 and spends the shared budget; t2 waits for it
    # b planned for a due id too, but the rate budget refused it: that is no lost race
    sleep_s = await b.claims.step()
    assert a_queue.polls == [["t1"]] and b_queue.polls == []
    assert not b.claims.plans[("suno", "default")].ceded and 0 < sleep_s <= 1.1
    assert (await backend.redis.get(store.claimer_key("suno", "default"))).startswith(f"{a.worker_id}|")
    # a ceded queue refused by the budget is looked at again when the budget allows, not a look later
    b.claims.plans[("suno", "default")] = QueuePlan(clock_ms[0], ceded=True)
    assert 0 < await b.claims.step() <= 1.1


async def test_the_outbox_loop_sleeps_until_its_soonest_delivery(backend: Backend) -> None:
    store = backend.store()
    clock_ms = [NOW_MS]
    sched, queue = scheduler(store, clock_ms)
    await backend.redis.zadd(store.outbox_key, {"dlv_now": NOW_MS, "dlv_soon": NOW_MS + 300})
    assert await sched.outbox.step() == pytest.approx(0.3)
    assert queue.deliveries == ["dlv_now"]
    clock_ms[0] += 300
    await sched.outbox.step()
    assert queue.deliveries == ["dlv_now", "dlv_soon"]


@pytest.mark.parametrize(
    ("first_poll_s", "idle_s"), [(3.0, 0.75), (0.8, 0.2), (100.0, CLAIM_UNSUBSCRIBED_IDLE_S), (0.0, CLAIM_MIN_IDLE_S)]
)
def test_the_claim_loop_wakes_before_a_new_tasks_first_poll(first_poll_s: float, idle_s: float) -> None:
    assert Cadence.idle_ms_for(first_poll_s) == int(idle_s * 1000)


async def next_wake(wakes: AsyncIterator[tuple[str, str, int]]) -> tuple[str, str, int]:
    return await asyncio.wait_for(anext(wakes), 5.0)


async def test_a_registration_no_claim_loop_expects_is_announced_on_the_wake_channel(backend: Backend) -> None:
    store = backend.store()
    async with store.wakes() as wakes:
        await register(store, "first", 3)  # the first task of a new queue
        assert await next_wake(wakes) == ("suno", "default", first_poll_ms(NOW_MS, 3))
        await register(store, "later", 9)  # the claim loop looks at NOW+3 s and learns of it then: not announced
        await register(store, "sooner", 1)
        await store.register(
            EnqueueRequest("suno", "b1", token="backup"), NOW_MS, deadline_s=600, first_due_ms=first_poll_ms(NOW_MS, 5)
        )
        # in order: "later" was not announced, "sooner" and the new queue's first task were
        assert await next_wake(wakes) == ("suno", "default", first_poll_ms(NOW_MS, 1))
        assert await next_wake(wakes) == ("suno", "backup", first_poll_ms(NOW_MS, 5))


async def test_ids_given_back_sooner_than_any_other_of_their_queue_are_announced(backend: Backend) -> None:
    store = backend.store()
    for task_id, first_poll_s in (("a", 3), ("b", 9)):
        await register(store, task_id, first_poll_s)
    got = await store.claim("suno", "default", NOW_MS + 10_000, batch=50, coalesce_ms=0, lease_ms=60_000, rate_rps=1e3)
    assert isinstance(got, Claimed) and sorted(got.ids) == ["a", "b"]
    async with store.wakes() as wakes:
        # a stopping worker gives "a" back, due now: the queue's soonest, which no claim loop plans for
        assert await store.release("suno", "default", got.claim_id, ["a"], NOW_MS + 10_001) == 1
        assert await next_wake(wakes) == ("suno", "default", NOW_MS + 10_001)
        # "b" given back due later than "a": the claim that takes "a" says when; not announced
        assert await store.release("suno", "default", got.claim_id, ["b"], NOW_MS + 20_000) == 1
        await register(store, "c", 1)
        assert await next_wake(wakes) == ("suno", "default", first_poll_ms(NOW_MS, 1))


async def test_an_announced_task_takes_a_ceded_queue_back(backend: Backend) -> None:
    store = backend.store()
    clock_ms = [NOW_MS]
    sched, queue = scheduler(store, clock_ms)
    await register(store, "old", 30)
    sched.claims.plans[("suno", "default")] = QueuePlan(NOW_MS + 5000, ceded=True)  # another worker claims it
    follower = asyncio.create_task(sched.wakes.step())
    try:
        await wait_until(lambda: sched.claims.subscribed)
        await sched.claims.step()  # the look at subscribing: nothing due, still ceded
        plan = sched.claims.plans[("suno", "default")]
        assert plan.ceded
        # that worker stopped and gave a task back (or another process registered one): announced
        await register(store, "new", 1)
        await wait_until(lambda: not plan.ceded)
        assert plan.at_ms == first_poll_ms(NOW_MS, 1)
        clock_ms[0] = plan.at_ms
        await sched.claims.step()
        assert queue.polls == [["new"]]
    finally:
        await sched.stop()
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)


async def test_the_wakes_loop_wakes_the_claim_loop_for_another_processs_registration(backend: Backend) -> None:
    store = backend.store()
    await register(store, "old", 30)
    clock_ms = [NOW_MS]
    sched, _ = scheduler(store, clock_ms, claim_idle_ms=250)
    assert sched.claims.idle_ms == 250  # not subscribed: short looks find other processes' tasks
    assert await sched.claims.step() == pytest.approx(0.25)
    follower = asyncio.create_task(sched.wakes.step())
    try:
        await wait_until(lambda: sched.claims.subscribed)
        # subscribed: what was registered before is looked for at once, then looks are CLAIM_IDLE_S apart
        assert sched.claims.idle_ms == int(CLAIM_IDLE_S * 1000) and sched.claims.plans[("suno", "default")].at_ms == 0
        assert await sched.claims.step() == pytest.approx(CLAIM_IDLE_S)
        await store.register(
            EnqueueRequest("suno", "new", token="backup"),
            NOW_MS,
            deadline_s=600,
            first_due_ms=first_poll_ms(NOW_MS, 0.6),
        )
        due_ms = first_poll_ms(NOW_MS, 0.6)
        await wait_until(lambda: ("suno", "backup") in sched.claims.plans)
        assert sched.claims.plans[("suno", "backup")].at_ms == due_ms
        assert ("suno", "backup") in sched.claims.queues  # a new queue, known without reading the list again
        assert await sched.claims.step() == pytest.approx((due_ms - NOW_MS) / 1000)  # sleeps until that task is due
    finally:
        await sched.stop()
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
    assert not sched.claims.subscribed and sched.claims.idle_ms == 250


async def test_stop_does_not_wait_out_blocked_reads(backend: Backend) -> None:
    sched, _ = scheduler(backend.store(), [NOW_MS])
    await sched.start()
    await wait_until(lambda: sched.claims.subscribed)
    await asyncio.sleep(0.05)  # intake is blocked in its read (INTAKE_BLOCK_MS), wakes in its own
    await asyncio.wait_for(sched.stop(), INTAKE_BLOCK_MS / 2000)
    assert not sched.running


async def test_a_broken_subscription_is_made_again_without_an_outage_back_off(
    real_redis_url: str | None, request: pytest.FixtureRequest
) -> None:
    client = create_redis(require_real_redis(real_redis_url, request))  # fakeredis cannot kill a connection
    try:
        sched, _ = scheduler(Store(client, prefix="resubscribe"), [NOW_MS])
        follower = asyncio.create_task(sched.wakes.step())
        await wait_until(lambda: sched.claims.subscribed)
        await client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        # the step ends normally (the loop's outage back-off stays reset) and says when to subscribe again
        assert await asyncio.wait_for(follower, 5.0) == RESUBSCRIBE_S
        assert not sched.claims.subscribed
    finally:
        await client.aclose()


async def test_a_queue_announced_on_the_wake_channel_survives_an_older_read_of_the_list(backend: Backend) -> None:
    class StaleStore(Store):
        async def queues(self) -> list[tuple[str, str]]:
            return [("suno", "default")]  # sent before the new queue's first task was registered

    sched, _ = scheduler(StaleStore(backend.redis), [NOW_MS])
    sched.claims.expect("suno", "backup", NOW_MS + 1000)  # announced meanwhile
    assert await sched.claims.known_queues() == [("suno", "backup"), ("suno", "default")]


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)
