"""Whether Redis may drop acetrack's keys: its ``maxmemory-policy``, read where the user may.

Any policy but ``noeviction`` lets Redis evict keys when it is full: task records, claims' leases,
outbox entries, so tasks and webhooks are lost without a word. Sidekiq and BullMQ warn the same
way. Managed services often deny ``CONFIG``: then it says it could not check.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

SAFE_POLICY = "noeviction"


def policy_problem(policy: str | None, error: str | None = None) -> str | None:
    """The warning for a policy read (None: nothing to warn of); ``error``: why it could not be read."""
    if error is not None:
        return (
            f"could not check Redis's maxmemory-policy ({error}): make sure it is {SAFE_POLICY}, or Redis "
            "may evict task records, leases and outbox entries when it is full"
        )
    if policy is None or policy == SAFE_POLICY:
        return None
    return (
        f"Redis's maxmemory-policy is {policy}: when it is full, Redis may evict task records, leases and "
        f"outbox entries (lost tasks and webhooks); set it to {SAFE_POLICY} (CONFIG SET maxmemory-policy "
        f"{SAFE_POLICY}, redis.conf, or your provider's parameter group)"
    )


async def eviction_problem(client: aioredis.Redis) -> str | None:
    """Read ``maxmemory-policy``; the warning to give, or None when Redis will not evict.

    Connection errors are raised (the caller's outage handling applies); a refused ``CONFIG``
    (an ACL without it, a managed service that renamed it) becomes the could-not-check warning.
    """
    try:
        answer = await client.config_get("maxmemory-policy")
    except ResponseError as e:  # NoPermissionError is one; so is 'unknown command'
        return policy_problem(None, f"CONFIG GET refused: {e}")
    value = answer.get("maxmemory-policy")
    policy = value.decode() if isinstance(value, bytes) else value
    return policy_problem(policy)
