"""The exception tree. A leaf module: stdlib only.

``AcetrackError`` is the root. Third-party exceptions are translated at the boundary
(aiohttp in ``api``, redis in ``store``) with ``raise X(...) from e``.
"""

from __future__ import annotations


class AcetrackError(Exception):
    """Root of every error acetrack raises on purpose."""


class ConfigError(AcetrackError):
    """A setting or hook name is wrong; the message says which and how to fix it."""


class InvalidInput(AcetrackError):
    """An enqueue request broke a rule of the intake table (DESIGN.md §2).

    Args:
        field: the offending field name.
        message: what is wrong and what to do.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message

    def __repr__(self) -> str:
        return f"InvalidInput(field={self.field!r}, message={self.message!r})"


class StoreError(AcetrackError):
    """Redis could not be reached or answered something unexpected."""


class UpstreamError(AcetrackError):
    """The Tasks API call failed. ``status`` is the HTTP status, or None for network errors."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, message={str(self)!r})"


class UpstreamUnavailable(UpstreamError):
    """Retryable: 429, 5xx, timeouts, network errors, unreadable bodies.

    ``retry_after_s`` carries the server's ``Retry-After`` when it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.retry_after_s = retry_after_s


class UpstreamRejected(UpstreamError):
    """Not retryable as is: 4xx other than 429 (bad token, too large, unknown service)."""


class UpstreamAuthError(UpstreamRejected):
    """401/403: the token is bad or used up. Polling for that token pauses; tasks stay pending."""


class UpstreamTooLarge(UpstreamRejected):
    """413, or a 400 for a batch: halve the batch and try again."""


class UnknownService(UpstreamRejected):
    """404 ``no_api``: the service does not exist upstream."""


def is_retryable(exc: BaseException) -> bool:
    """True when the same request may succeed later without any change."""
    return isinstance(exc, UpstreamUnavailable)
