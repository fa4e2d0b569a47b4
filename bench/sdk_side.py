"""One SDK contender: a ``bench.sdk_client`` process running the official SDK's ``wait()`` loop, one per task."""

from __future__ import annotations

import asyncio
import json
import os
import random
from pathlib import Path

from bench import procs
from bench.metrics import ContenderRun
from bench.timescale import SDK_MAX_WAIT_S, SDK_POLL_INTERVAL_S
from bench.workload import TaskSpec, Verdict, Workload


class SdkSide:
    """One SDK contender: a ``bench.sdk_client`` process and the task ids it waits for."""

    def __init__(self, name: str, ids: list[str], specs: dict[str, TaskSpec], scale: float, sim_url: str, tmp: Path):
        self.name, self.token, self.ids, self.scale = name, name, ids, scale
        self.plan_path, self.out_path = tmp / f"{name}-plan.json", tmp / f"{name}-out.json"
        plan = {
            "base_url": sim_url,
            "token": self.token,
            "poll_interval": SDK_POLL_INTERVAL_S * scale,
            "max_wait": SDK_MAX_WAIT_S * scale,
            "scale": scale,
            "tasks": [[i, specs[i].arrive_s * scale + 0.02] for i in ids],
        }
        self.plan_path.write_text(json.dumps(plan))
        self.log = open(tmp / f"{name}.log", "wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACEDATACLOUD_")}
        self.proc = procs.start_python(
            "bench.sdk_client", [str(self.plan_path), str(self.out_path)], env=env, log=self.log
        )
        self.exited = False
        self.cpu_s: float | None = None

    def ready(self) -> None:
        procs.read_line(self.proc, "READY")

    def go(self, t0: float) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{t0}\n".encode())
        self.proc.stdin.flush()

    def poll(self) -> bool:
        if not self.exited:
            self.exited, self.cpu_s = procs.reap(self.proc.pid)
        return self.exited

    async def finish(self) -> tuple[dict[str, float], dict[str, Verdict]]:
        if not self.poll():
            self.proc.send_signal(15)
            while not self.poll():
                await asyncio.sleep(0.1)
        rows = json.loads(self.out_path.read_text()) if self.out_path.exists() else []
        started = {r["id"]: r["started"] for r in rows if r["started"] is not None}
        verdicts = {r["id"]: Verdict(r["state"], r["at"], note=r["note"]) for r in rows}
        return started, verdicts

    def contender_run(self, started: dict[str, float], verdicts: dict[str, Verdict], wall_s: float) -> ContenderRun:
        """What this contender did, for the report: ``started`` and ``verdicts`` as ``finish`` returned them."""
        limited = "no rate limit (lifted for this token)" if self.name == "sdk-unlimited" else "60 req/s limit"
        return ContenderRun(
            self.name,
            "sdk",
            self.token,
            self.ids,
            started,
            verdicts,
            self.cpu_s,
            wall_s,
            label=f"official acedatacloud SDK, AsyncTaskHandle.wait() per task, poll_interval "
            f"{SDK_POLL_INTERVAL_S:g} s, max_wait {SDK_MAX_WAIT_S:g} s (unscaled), {len(self.ids)} tasks, "
            f"{limited}",
        )


def sdk_sample(workload: Workload, size: int, seed: int) -> list[str]:
    """The ids ``sdk-unlimited`` tracks: a random ``size`` of the workload's (seeded), in workload order."""
    ids = [t.id for t in workload.tasks]
    if size >= len(ids):
        return ids
    chosen = set(random.Random(f"sdk-sample:{seed}").sample(ids, size))
    return [i for i in ids if i in chosen]
