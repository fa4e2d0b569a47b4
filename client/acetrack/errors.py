"""The client's errors: one root, ``AcetrackError``, and one class per thing a caller handles differently."""

from __future__ import annotations


class AcetrackError(Exception):
    """Root of every error the client raises."""


class InvalidInput(AcetrackError, ValueError):
    """A field breaks an intake rule (checked locally, or by the server over HTTP).

    Args:
        field: the offending field (``service``, ``id``, ``meta``, ...).
        message: what is wrong and what a good value looks like.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message

    def __repr__(self) -> str:
        return f"InvalidInput(field={self.field!r}, message={self.message!r})"


class NotFound(AcetrackError, LookupError):
    """acetrack does not track the task (never enqueued, or its record expired)."""


class Timeout(AcetrackError, TimeoutError):
    """The task did not finish within the wait's ``timeout_s``."""


class Unavailable(AcetrackError, ConnectionError):
    """Redis or the HTTP API cannot be reached, or answered that it is unavailable; try again later."""


class Unauthorized(AcetrackError, PermissionError):
    """The HTTP API refused the token: pass the server's ``ACETRACK_HTTP_TOKEN`` as ``token``."""


class Unsupported(AcetrackError, NotImplementedError):
    """The operation has no contract over this transport (e.g. cancel over Redis)."""
