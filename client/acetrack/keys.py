"""The Redis names of acetrack's public contract (DESIGN.md §2), under one key prefix.

Only these are read or written by the client: the intake stream (enqueue), the rejected stream
(why an enqueue did not take), the events stream (waits and the events iterator) and a task's hash
(its record). ``tests/test_client_contract.py`` checks them against the worker's own names.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

DEFAULT_PREFIX = "acetrack"
#: the task hash's field holding the record: its JSON (nulls left out) while pending; once
#: finished, that JSON with the upstream's answer, packed (base64 of zlib with ``RECORD_ZDICT``, or
#: without a dictionary if an earlier acetrack packed it), so not starting with '{'
RECORD_FIELD = "record"
#: zlib's preset dictionary of packed records: the worker's ``worker.store.codecs.RECORD_ZDICT``
RECORD_ZDICT = (
    # the upstream's answer (worker/wire.py), rarer strings first: zlib finds the later ones closer
    b'{"created_at":,"request":{"action":"generate","model":"","custom":false,"instrumental":false,'
    b'"style":"","title":"","callback_url":"https://"},"trace_id":"","type":"audios","response":'
    b'{"success":true,"task_id":"","data":[{"id":"","title":"","image_url":"https://cdn2.suno.ai/image_'
    b'.jpeg","lyric":"[Verse]\\n[Chorus]\\n[Bridge]\\n[Verse 2]\\n","audio_url":"https://cdn1.suno.ai/.mp3",'
    b'"video_url":"https://cdn1.suno.ai/.mp4","image_id":"","topic":null,"seed":"","sound":"",'
    b'"created_at":"T:.Z","model":"chirp-v","prompt":"","style":"","progress":"100%","state":"succeeded",'
    b'"duration":}]},"duration":,"finished_at":}'
    # a record (worker/models.py), as the worker packs it
    b'{"service":"suno","id":"","state":"succeeded","reason":"upstream_error","partial":false,"progress":100,'
    b'"clips":[{"id":"","title":"","state":"succeeded","audio_url":"https://cdn1.suno.ai/.mp3",'
    b'"video_url":"https://cdn1.suno.ai/.mp4","image_url":"https://cdn2.suno.ai/image_.jpeg","duration_s":'
    b'}],"error":{"code":"","message":""},"attempts":,"enqueued_at_ms":,"updated_at_ms":,"finished_at_ms":,'
    b'"upstream_finished_at":,"token":"default","response":{"id":"'
)

#: the task hash's field of a record finished by an earlier acetrack, which packed only the raw
#: upstream answer (base64 of zlib of its JSON) and kept the rest as JSON in ``record``
RESPONSE_FIELD = "response"

#: every dictionary a packed record may name, by its Adler-32 (the worker's ``RECORD_ZDICTS``)
RECORD_ZDICTS = {zlib.adler32(RECORD_ZDICT): RECORD_ZDICT}


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix (``ACETRACK_KEY_PREFIX`` of the workers)."""

    prefix: str = DEFAULT_PREFIX

    @property
    def intake(self) -> str:
        """The stream producers XADD tasks to."""
        return f"{self.prefix}:intake"

    @property
    def rejected(self) -> str:
        """The stream a bad intake entry is moved to, with its ``reason``."""
        return f"{self.prefix}:intake:rejected"

    @property
    def events(self) -> str:
        """The events stream."""
        return f"{self.prefix}:events"

    def task(self, service: str, task_id: str) -> str:
        """The hash holding one task's record."""
        return f"{self.prefix}:task:{service}:{task_id}"
