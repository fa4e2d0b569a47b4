"""acetrack's producer client: enqueue Ace Data Cloud tasks and read or wait for their outcome, over
Redis or over the HTTP API, async (``Client``) or blocking (``SyncClient``). Needs neither the worker
nor its settings nor arq: only redis-py and aiohttp."""

from acetrack.client import Client
from acetrack.errors import AcetrackError, InvalidInput, NotFound, Timeout, Unauthorized, Unavailable, Unsupported
from acetrack.records import Clip, Event, Record
from acetrack.sync import SyncClient

__version__ = "0.2.0"

__all__ = [
    "AcetrackError",
    "Client",
    "Clip",
    "Event",
    "InvalidInput",
    "NotFound",
    "Record",
    "SyncClient",
    "Timeout",
    "Unauthorized",
    "Unavailable",
    "Unsupported",
    "__version__",
]
