"""One acetrack contender: its throwaway ``redis-server``, its worker processes, and what its Redis shows
(memory, learned lifetimes, the verdicts in its events stream)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pstats
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench import callbacks as bench_callbacks
from bench import procs
from bench.metrics import ContenderRun
from bench.timescale import acetrack_settings
from bench.workload import SERVICE, Verdict, Workload
from config import Settings
from worker.cadence import usual_lifetime_s
from worker.models import TERMINAL_STATES, TaskState
from worker.store import Store
from worker.tracker import Tracker

#: Redis memory per pending task is measured only if no more than this share had finished at the peak
MAX_FINISHED_SHARE = 0.05


class AcetrackSide:
    """One acetrack contender: its redis-server, its worker processes, its view of Redis."""

    def __init__(
        self,
        name: str,
        workers: int,
        scale: float,
        sim_url: str,
        tmp: Path,
        args: argparse.Namespace,
        src: Path = procs.ROOT,
    ):
        self.name, self.workers, self.scale, self.token = name, workers, scale, name
        #: the acetrack checkout its workers run (another one: a same-run baseline, ``--baseline-src``)
        self.src = src
        self.redis = procs.RedisServer()
        self.client = aioredis.Redis.from_url(self.redis.url, decode_responses=True)
        self.store = Store(self.client)
        values = acetrack_settings(scale, args.acetrack_set)
        self.settings = values
        self.tracker = Tracker(self.store, deadline_s=values["deadline_s"], first_poll_s=values["first_poll_s"])
        #: with --callback-loss: an ``acetrack serve`` takes the upstream's callbacks on this port
        self.api_port = procs.free_port() if args.callback_loss is not None else None
        self.env = self._environment(values, sim_url, args.tasks)
        self.tmp, self.profile = tmp, args.profile
        self.procs: list[subprocess.Popen[bytes]] = []
        self.enqueued: dict[str, float] = {}
        self.mem_baseline = 0
        #: Redis's own CPU seconds when the first task arrived (``redis_cpu_s``)
        self.redis_cpu_start_s = 0.0
        self.dataset_baseline = 0
        self.samples: list[tuple[float, int, int, int]] = []  # (at, used_memory, pending, finished)
        self.learned: list[tuple[float, float]] = []  # (at, usual lifetime in unscaled s)
        self.key_bytes: dict[str, Any] = {}
        self.families: dict[str, Any] = {}
        self.pending = -1

    def _environment(self, values: dict[str, float], sim_url: str, tasks: int) -> dict[str, str]:
        """The workers' environment: this one without ``ACETRACK_*``, then this contender's settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACETRACK_")}
        env.update({f"ACETRACK_{k.upper()}": repr(v) for k, v in values.items()})
        env.update(
            {
                "ACETRACK_REDIS_URL": self.redis.url,
                "ACETRACK_API_BASE_URL": sim_url,
                "ACETRACK_API_TOKEN": self.token,
                "ACETRACK_EVENTS_MAXLEN": str(max(100_000, 10 * tasks)),
                "ACETRACK_LOG_LEVEL": "WARNING",
            }
        )
        if self.api_port is not None:
            env.update(
                {"ACETRACK_HTTP_HOST": "127.0.0.1", "ACETRACK_HTTP_PORT": str(self.api_port)}
                | {"ACETRACK_CALLBACK_KEY": bench_callbacks.KEY}
            )
        return env

    @property
    def callback_url(self) -> str | None:
        """Where this contender takes callbacks (None: callbacks are off in this run)."""
        if self.api_port is None:
            return None
        return f"http://127.0.0.1:{self.api_port}/callbacks/{SERVICE}?key={bench_callbacks.KEY}"

    def start_workers(self) -> None:
        if self.api_port is not None:
            log = open(self.tmp / f"{self.name}-serve.log", "wb")
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "worker", "serve"],
                    cwd=self.src,
                    env={**self.env, "PYTHONPATH": str(self.src)},
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            )
        for i in range(self.workers):
            log = open(self.tmp / f"{self.name}-worker{i}.log", "wb")
            args = ["-m", "worker", "worker"]
            if self.profile:
                args = ["-m", "bench.profile_worker", str(self.tmp / f"{self.name}-worker{i}.prof")]
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, *args],
                    cwd=self.src,
                    env={**self.env, "PYTHONPATH": str(self.src)},
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            )

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(await self.store.workers()) < self.workers:
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                raise SystemExit(f"bench: {self.name} workers did not start; see {self.tmp}/{self.name}-worker*.log")
            await asyncio.sleep(0.1)
        while self.api_port is not None:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.api_port)
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"bench: {self.name}'s acetrack serve did not start; see {self.tmp}") from None
                await asyncio.sleep(0.1)
                continue
            writer.close()
            return

    def cpu(self) -> float:
        return sum(self.cpu_each())

    def cpu_each(self) -> list[float]:
        return [procs.cpu_seconds(p.pid) or 0.0 for p in self.procs]

    async def redis_cpu_s(self) -> float:
        """The CPU seconds this contender's redis-server has used (user + system, ``INFO cpu``)."""
        cpu = await self.client.info("cpu")
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

    async def used_memory(self) -> int:
        return int((await self.client.info("memory"))["used_memory"])

    async def pending_count(self) -> int:
        """The tasks this contender has pending now (its pending index)."""
        return int(await self.client.zcard(self.store.index_key(SERVICE, TaskState.PENDING)))

    async def sample(self, now: float) -> None:
        used, pending = await self.used_memory(), await self.pending_count()
        finished = sum([int(await self.client.zcard(self.store.index_key(SERVICE, s))) for s in TERMINAL_STATES])
        self.pending = pending
        self.samples.append((now, used, pending, finished))
        usual = usual_lifetime_s(await self.store.lifetimes_s(SERVICE))
        self.learned.append((now, usual / self.scale))

    async def sample_keys(self, limit: int = 200) -> None:
        """Bytes per pending task from MEMORY USAGE: its hash plus its share of the sorted sets it is in."""
        pending_key = self.store.index_key(SERVICE, TaskState.PENDING)
        ids = await self.client.zrandmember(pending_key, limit) or []
        if len(ids) < min(limit, 20):
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.memory_usage(self.store.task_key(SERVICE, i), samples=0)
            hashes = [h or 0 for h in await pipe.execute()]
        zsets = {
            "due": self.store.due_key(SERVICE, "default"),
            "idx_pending": pending_key,
        }
        per_member = {}
        for label, key in zsets.items():
            size, count = await self.client.memory_usage(key, samples=0) or 0, await self.client.zcard(key)
            per_member[label] = round(size / count, 1) if count else 0.0
        task_hash = sum(hashes) / len(hashes)
        sample = {
            "task_hash_bytes": round(task_hash, 1),
            "task_hash_bytes_max": max(hashes),
            "zset_bytes_per_member": per_member,
            "key_bytes_per_task": round(task_hash + sum(per_member.values())),
            "sampled_pending": len(ids),
        }
        if sample["key_bytes_per_task"] >= self.key_bytes.get("key_bytes_per_task", 0):
            self.key_bytes = sample

    async def breakdown(self) -> None:
        """Where Redis memory goes, by key family (MEMORY USAGE of every key), and INFO's dataset figure."""
        families: dict[str, list[int]] = {}
        keys = [k async for k in self.client.scan_iter(count=1000)]
        async with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.memory_usage(key, samples=0)
            sizes = await pipe.execute()
        for key, size in zip(keys, sizes, strict=True):
            parts = key.split(":")
            family = ":".join(parts[:3] if parts[1] == "arq" else parts[:2])
            entry = families.setdefault(family, [0, 0])
            entry[0] += 1
            entry[1] += size or 0
        info = await self.client.info("memory")
        self.families = {
            "families_at_end_of_arrivals": {k: {"keys": v[0], "bytes": v[1]} for k, v in sorted(families.items())},
            "dataset_bytes_at_end_of_arrivals": int(info["used_memory_dataset"]),
            "pending_at_end_of_arrivals": self.pending,
        }

    def finished_bytes(self) -> int | None:
        """``used_memory`` over the baseline per finished task, once none is pending (None before)."""
        _, used, pending, finished = self.samples[-1]
        return round((used - self.mem_baseline) / finished) if finished and not pending else None

    def memory(self) -> dict[str, Any]:
        if not self.samples:
            return {}
        at, used, pending, finished = max(self.samples, key=lambda s: s[2])
        delta = round((used - self.mem_baseline) / pending) if pending else None
        out: dict[str, Any] = {
            "baseline_used_memory": self.mem_baseline,
            "used_memory_at_peak_pending": used,
            "peak_pending": pending,
            "finished_at_peak_pending": finished,
            # finished records (and their events) would count against pending tasks: only a burst measures it
            "bytes_per_pending_task": delta if finished <= MAX_FINISHED_SHARE * pending else None,
            "delta_at_peak_pending_per_pending_task": delta,
            # every task done: what a finished task costs while retained (record, indexes, events)
            "bytes_per_finished_task": self.finished_bytes(),
            "dataset_baseline_bytes": self.dataset_baseline,
            **self.key_bytes,
            **self.families,
        }
        return out

    async def verdicts(self) -> tuple[dict[str, Verdict], dict[str, int]]:
        """Terminal verdicts from the events stream (first terminal event per task), and event counts."""
        verdicts: dict[str, Verdict] = {}
        counts: dict[str, int] = {}
        terminal_per_task: dict[str, int] = {}
        start = "-"
        while True:
            entries = await self.client.xrange(self.store.events_key, min=start, count=5000)
            if not entries:
                break
            for _entry_id, fields in entries:
                counts[fields["type"]] = counts.get(fields["type"], 0) + 1
                if fields["type"] not in ("task.succeeded", "task.failed"):
                    continue
                terminal_per_task[fields["id"]] = terminal_per_task.get(fields["id"], 0) + 1
                if fields["id"] in verdicts:
                    continue
                record = json.loads(fields["record"])
                verdicts[fields["id"]] = Verdict(
                    record["state"], int(fields["at_ms"]) / 1000, partial=record["partial"], reason=record["reason"]
                )
            start = "(" + entries[-1][0]
        counts["duplicate_terminal_events"] = sum(n - 1 for n in terminal_per_task.values())
        return verdicts, counts

    async def contender_run(
        self, workload: Workload, cpu_by_worker_s: list[float], wall_s: float, idle: float
    ) -> ContenderRun:
        """What this contender did, for the report: its verdicts, CPU, memory and Redis's own figures."""
        redis_cpu_s = await self.redis_cpu_s() - self.redis_cpu_start_s  # before reading the events back
        verdicts, event_counts = await self.verdicts()
        claims = sorted(int(w.get("claims", 0)) for w in await self.store.workers())
        commands = await self.client.info("commandstats")
        return ContenderRun(
            self.name,
            "acetrack",
            self.token,
            [t.id for t in workload.tasks],
            self.enqueued,
            verdicts,
            sum(cpu_by_worker_s),
            wall_s,
            label=f"acetrack{_revision(self.src)}, {self.workers} worker process(es), own redis-server; budget "
            f"{Settings.model_fields['rate_limit_rps'].default:g} req/s (unscaled)",
            workers=self.workers,
            idle_cpu_per_s=idle,
            memory=self.memory(),
            learned=self.learned,
            extra={
                "events": event_counts,
                # how the work split: each worker's CPU, and the batches each claimed (heartbeats, <= 5 s old)
                "worker_cpu_s": sorted(round(c, 2) for c in cpu_by_worker_s),
                "worker_claims": claims,
                # from the first arrival to the end, every client's commands included (the bench's enqueues,
                # its memory samples): the single Redis's share of the work
                "redis_cpu_s": round(redis_cpu_s, 2),
                # every client's commands (the bench's enqueues and memory samples too): where round trips go
                "redis_calls": {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in commands.items()},
            },
        )

    def stop_workers(self) -> None:
        for p in self.procs:
            p.send_signal(15)
        for p in self.procs:
            procs.stop(p)

    def profiles(self, top: int = 25) -> list[str]:
        out = []
        for i in range(self.workers):
            path = self.tmp / f"{self.name}-worker{i}.prof"
            if not path.exists():
                continue
            text = StringIO()
            stats = pstats.Stats(str(path), stream=text)
            stats.sort_stats("tottime").print_stats(top)
            stats.sort_stats("cumulative").print_stats(top)
            out.append(text.getvalue())
        return out

    async def close(self) -> None:
        for p in self.procs:
            procs.stop(p)
        await self.client.aclose()
        self.redis.stop()


def _revision(src: Path) -> str:
    done = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if done.returncode != 0:
        return ""
    # a run of work in progress says so: its figures are not the commit's
    changed = subprocess.run(
        ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=normal", "--", "worker", "config"],
        capture_output=True,
        text=True,
    )
    dirty = " with uncommitted changes to worker/ or config/" if changed.stdout.strip() else ""
    return f" at {done.stdout.strip()}{dirty}"
