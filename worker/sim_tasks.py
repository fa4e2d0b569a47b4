"""The simulator's tasks: their lifecycle scripts and the Tasks API records they show over time.

Each record mirrors the vendor's published examples (``tests/seeds``): the Suno shape (two clips,
``success``) or the Producer shape (one clip, ``progress``). A record is computed from the clock on
every read, so a task needs no timer. Nothing here imports the ``worker`` package's other modules.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

Json = dict[str, Any]

#: Every lifecycle script the simulator knows.
SCRIPTS = frozenset({"succeed", "partial", "error", "legacy", "stuck", "unknown"})
#: Scripts chosen for auto-created tasks, with their weights out of 100.
AUTO_WEIGHTS = (("succeed", 70), ("partial", 10), ("error", 10), ("legacy", 10))
#: A task is ``pending`` for this fraction of its ``run_s``, then running.
PENDING_FRACTION = 0.25
_USER_ID = "ad7afe47-cea9-4cda-980f-2ad8810e51cf"
_API_IDS = {"suno": "09a26295-5972-4392-9318-dcd9b218f90d", "producer": "01d96900-9f8c-41d7-814c-95c7a885ba61"}
_TITLES = ("Holiday Wishes", "La La La", "Woke up with the sun in my eyes")
_PROMPTS = ("A song for Christmas", "la la la", "a happy pop song about sunny days")


def _digest(*parts: str) -> bytes:
    return hashlib.sha256(":".join(parts).encode()).digest()


def _uuid(*parts: str) -> str:
    return str(uuid.UUID(bytes=_digest(*parts)[:16], version=4))


def _pick(options: tuple[str, ...], *parts: str) -> str:
    return options[_digest(*parts)[0] % len(options)]


def auto_script(task_id: str) -> str:
    """Choose the script of an auto-created task deterministically from its id.

    Args:
        task_id: The upstream task id.
    """
    bucket = int.from_bytes(_digest("script", task_id)[:4], "big") % 100
    for script, weight in AUTO_WEIGHTS:
        if bucket < weight:
            return script
        bucket -= weight
    return "succeed"


def auto_run_s(task_id: str, low_s: float, high_s: float) -> float:
    """Choose the run time of an auto-created task, uniform in ``[low_s, high_s]``, from its id."""
    fraction = int.from_bytes(_digest("run", task_id)[:4], "big") / 0xFFFFFFFF
    return low_s + (high_s - low_s) * fraction


@dataclass
class SimTask:
    """A simulated upstream task; its record is computed from the clock on every read."""

    service: str
    id: str
    script: str
    run_s: float
    clip_gap_s: float
    created_at: float

    @property
    def producer(self) -> bool:
        """Whether records use the Producer shape (one clip, progress, no ``success``)."""
        return self.service == "producer"

    @property
    def clip_count(self) -> int:
        """How many clips the task yields."""
        return 1 if self.producer else 2

    def clip_finish_s(self, index: int) -> float:
        """Seconds after creation at which clip ``index`` is final."""
        if self.script == "stuck":
            return math.inf
        return self.run_s + index * self.clip_gap_s


def build_record(task: SimTask, now_s: float) -> Json:
    """Build the Tasks API record of ``task`` as it stands at ``now_s`` (epoch seconds).

    Args:
        task: The simulated task.
        now_s: The current time in epoch seconds.
    """
    t = now_s - task.created_at
    record = _base_record(task)
    if task.script == "error" and t >= task.run_s:
        error = {"code": "generation_failed", "message": "the generation failed upstream; try again"}
        record["response"] = {"success": False, "task_id": task.id, "error": error, "data": []}
        return _finish(record, task, task.run_s)
    response: Json = {"task_id": task.id, "data": [_clip(task, i, t) for i in range(task.clip_count)]}
    record["response"] = response if task.producer else {"success": True, **response}
    elapsed = task.clip_finish_s(task.clip_count - 1)
    if t >= elapsed and task.script != "legacy":
        return _finish(record, task, elapsed)
    return record


def _base_record(task: SimTask) -> Json:
    record: Json = {
        "_id": hashlib.sha256(f"{task.service}:{task.id}".encode()).hexdigest()[:24],
        "id": task.id,
        "api_id": _API_IDS.get(task.service) or _uuid("api", task.service),
        "application_id": _uuid("application", task.service),
        "created_at": round(task.created_at, 3),
        "credential_id": _uuid("credential", task.service),
        "request": {"action": "generate", "prompt": _pick(_PROMPTS, "prompt", task.id)},
        "trace_id": _uuid("trace", task.service, task.id),
        "user_id": _USER_ID,
    }
    if task.producer:
        record["type"] = "audios"
        record["request"]["model"] = "FUZZ-2.0 Pro"
    return record


def _finish(record: Json, task: SimTask, elapsed_s: float) -> Json:
    record["duration"] = float(elapsed_s)
    record["finished_at"] = round(task.created_at + elapsed_s, 3)
    return record


def _clip(task: SimTask, index: int, t: float) -> Json:
    clip_id = _uuid("clip", task.service, task.id, str(index))
    if t < PENDING_FRACTION * task.run_s:
        phase = "pending"
    elif t < task.clip_finish_s(index):
        phase = "running"
    else:
        phase = "done"
    if task.producer:
        return _producer_clip(task, clip_id, phase, t)
    return _suno_clip(task, clip_id, index, phase, t)


def _suno_clip(task: SimTask, clip_id: str, index: int, phase: str, t: float) -> Json:
    title = _pick(_TITLES, "title", task.id)
    if phase == "done" and task.script == "partial" and index == 1:
        return {"id": clip_id, "title": title, "state": "error", "error": "clip generation failed"}
    if phase == "done":
        clip = _suno_final(task, clip_id, title)
        return clip if task.script == "legacy" else {**clip, "state": "succeeded"}
    if task.script == "legacy":
        return {"id": clip_id, "title": title, "model": "chirp-v3.5"}
    if phase == "pending":
        return {"id": clip_id, "title": "", "state": "pending"}
    return {
        "id": clip_id,
        "title": title,
        "image_url": f"https://cdn2.suno.ai/image_{clip_id}.jpeg",
        "audio_url": f"https://audiopipe.suno.ai/?item_id={clip_id}",
        "state": "streaming" if t >= task.run_s / 2 else "running",
    }


def _suno_final(task: SimTask, clip_id: str, title: str) -> Json:
    created = datetime.fromtimestamp(task.created_at, UTC).isoformat(timespec="milliseconds")
    return {
        "id": clip_id,
        "title": title,
        "image_url": f"https://cdn2.suno.ai/image_{clip_id}.jpeg",
        "lyric": "[Verse]\nSnow is falling soft and white\nLights are twinkling oh so bright",
        "audio_url": f"https://cdn1.suno.ai/{clip_id}.mp3",
        "video_url": f"https://cdn1.suno.ai/{clip_id}.mp4",
        "created_at": created.replace("+00:00", "Z"),
        "model": "chirp-v3.5",
        "prompt": _pick(_PROMPTS, "prompt", task.id),
        "style": "pop",
        "duration": 120 + int.from_bytes(_digest("duration", clip_id)[:4], "big") % 6000 / 100,
    }


def _producer_clip(task: SimTask, clip_id: str, phase: str, t: float) -> Json:
    title = _pick(_TITLES, "title", task.id)
    if phase == "done":
        clip = _producer_final(task, clip_id, title)
        if task.script == "legacy":
            del clip["progress"], clip["state"]
        return clip
    if task.script == "legacy":
        return {"id": clip_id, "title": title}
    if phase == "pending":
        return {"id": clip_id, "title": "", "state": "pending", "progress": "0%"}
    percent = min(99, max(1, int(100 * t / task.run_s)))
    return {"id": clip_id, "title": title, "state": "running", "progress": f"{percent}%"}


def _producer_final(task: SimTask, clip_id: str, title: str) -> Json:
    base = f"https://storage.googleapis.com/corpusant-app-public/riffs/{_uuid('riff', task.id)}"
    seconds = 90 + int.from_bytes(_digest("duration", clip_id)[:6], "big") / 2**48 * 120
    return {
        "id": clip_id,
        "title": title,
        "image_url": f"{base}/image/{clip_id}.jpg",
        "lyric": "[Verse]\nWoke up with the sun in my eyes\nNo clouds above just blue in the skies",
        "audio_url": f"{base}/audio/{clip_id}.m4a",
        "video_url": None,
        "image_id": clip_id,
        "topic": None,
        "seed": str(int.from_bytes(_digest("seed", clip_id)[:4], "big")),
        "sound": "",
        "created_at": datetime.fromtimestamp(task.created_at, UTC).isoformat().replace("+00:00", "Z"),
        "model": "FUZZ-2.0 Pro",
        "progress": "100%",
        "state": "succeeded",
        "duration": str(seconds),
    }
