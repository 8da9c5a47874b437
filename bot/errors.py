"""One exception tree for the whole bot; third-party errors are wrapped at the boundary."""

from __future__ import annotations


class NewsbotError(Exception):
    """Base of every error the bot raises on purpose."""


class ConfigError(NewsbotError):
    """The configuration cannot be used; ``problems`` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class StorageError(NewsbotError):
    """The state database cannot be opened, read or written."""


class FeedError(NewsbotError):
    """A feed could not be fetched or understood. The message is one clear line."""


class FetchError(FeedError):
    """The feed server could not be reached or answered with an error."""

    def __init__(self, message: str, *, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class BlockedURLError(FetchError):
    """The URL is refused by policy (scheme, or an address in a private network)."""


class ParseError(FeedError):
    """The body is not a feed we can read."""


class TransportError(NewsbotError):
    """A chat network operation failed."""


class TemporaryTransportError(TransportError):
    """Worth retrying later: network error, 5xx, homeserver down."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ClaimLapsedError(TemporaryTransportError):
    """Several instances: this instance's claim on a message lapsed before it left, so
    another instance may send it; nothing was sent."""

    def __init__(self) -> None:
        super().__init__("this instance's claim on the message lapsed (another instance "
                         "may send it)")


class RateLimitedError(TemporaryTransportError):
    """The homeserver asked us to slow down (M_LIMIT_EXCEEDED)."""


class RoomUnavailableError(TransportError):
    """The room refuses us (not joined, kicked, banned, unknown): retrying now will not help."""

    def __init__(self, message: str, *, errcode: str | None = None) -> None:
        super().__init__(message)
        self.errcode = errcode


class MessageRejectedError(TransportError):
    """The homeserver will never accept this message (too large, malformed): skip it."""


class AuthError(TransportError):
    """The credentials are refused (M_UNKNOWN_TOKEN, wrong password)."""
