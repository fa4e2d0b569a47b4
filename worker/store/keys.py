"""Every Redis key and channel name of acetrack: formatted here and nowhere else.

A queue is one (service, token) pair; its due ids live in ``due:{service}:{token}``. A task's hash
is ``task:{service}:{id}``. Names shared with Lua reach the scripts as KEYS or ARGV.
"""

from __future__ import annotations

from worker.models import TaskState

#: the intake stream's consumer group: every worker reads the stream in it
INTAKE_GROUP = "acetrack-workers"


def arq_queue_name(prefix: str) -> str:
    """The arq queue (a sorted set arq owns) of the workers of one key prefix: named here with the
    rest of acetrack's keys, so the ACL's key pattern covers it."""
    return f"{prefix}:arq:queue"


def queue_member(service: str, token: str) -> str:
    """A (service, token) queue as named in the queues set and on the wake channel."""
    return f"{service}:{token}"


def queue_of(member: str) -> tuple[str, str]:
    """Inverse of ``queue_member`` (a service name has no ':')."""
    service, _, token = member.partition(":")
    return service, token


class Keys:
    """The key names under one prefix (``ACETRACK_KEY_PREFIX``)."""

    def __init__(self, prefix: str = "acetrack") -> None:
        self.prefix = prefix

    # -- key builders: the only place key names are formatted --------------------------------
    def task_key(self, service: str, task_id: str) -> str:
        return f"{self.prefix}:task:{service}:{task_id}"

    def task_prefix(self, service: str) -> str:
        return f"{self.prefix}:task:{service}:"

    def due_key(self, service: str, token: str) -> str:
        return f"{self.prefix}:due:{service}:{token}"

    def index_key(self, service: str | None, state: TaskState | str) -> str:
        """Tasks of one service (or of all: None) in one state, scored by enqueue (pending) or finish time."""
        scope = f"idx:{service}" if service else "idxall"
        return f"{self.prefix}:{scope}:{TaskState(state).value}"

    def backoff_key(self, service: str, token: str) -> str:
        return f"{self.prefix}:backoff:{service}:{token}"

    def claimer_key(self, service: str, token: str) -> str:
        """The worker that last claimed a batch of the queue, and when: '<worker id>|<ms>' (a lease)."""
        return f"{self.prefix}:claimer:{service}:{token}"

    def paused_key(self, token: str) -> str:
        return f"{self.prefix}:paused:{token}"

    def rate_key(self, token: str) -> str:
        return f"{self.prefix}:rate:{token}"

    def lifetimes_key(self, service: str) -> str:
        return f"{self.prefix}:lifetimes:{service}"

    def callbacks_key(self, service: str) -> str:
        """A hash: how many of the service's recent finishes there were (``finished``) and how many
        of those tasks the upstream called back for (``called``), as the cadence learns it."""
        return f"{self.prefix}:callbacks:{service}"

    def delivery_prefix(self) -> str:
        return f"{self.prefix}:delivery:"

    def worker_key(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    @property
    def intake_key(self) -> str:
        return f"{self.prefix}:intake"

    @property
    def rejected_key(self) -> str:
        return f"{self.prefix}:intake:rejected"

    @property
    def events_key(self) -> str:
        return f"{self.prefix}:events"

    @property
    def outbox_key(self) -> str:
        return f"{self.prefix}:outbox"

    @property
    def dead_key(self) -> str:
        return f"{self.prefix}:dead"

    @property
    def disabled_key(self) -> str:
        return f"{self.prefix}:webhooks:disabled"

    @property
    def counters_key(self) -> str:
        return f"{self.prefix}:counters"

    @property
    def queues_key(self) -> str:
        return f"{self.prefix}:queues"

    @property
    def services_key(self) -> str:
        return f"{self.prefix}:services"

    @property
    def write_probe_key(self) -> str:
        """Never created: ``SET`` of it with ``XX`` writes nothing, yet a full Redis refuses it
        (``connect.wait_for_room``)."""
        return f"{self.prefix}:write-probe"

    @property
    def wake_channel(self) -> str:
        """Pub/sub channel: '<service>:<token>|<due_ms>' of a registration or release no claim loop
        expects."""
        return f"{self.prefix}:wake"
