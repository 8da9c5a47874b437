"""nio's answers turned into the bot's own errors (bot.errors), in one place.

nio returns errors as values; ``checked`` turns every one of them, and every connection
failure, into the bot's own exceptions, so nothing above this package inspects nio types.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp
import nio

from bot.errors import (
    AuthError,
    MessageRejectedError,
    RateLimitedError,
    RoomUnavailableError,
    TemporaryTransportError,
    TransportError,
)

T = TypeVar("T")

_REJECTED_CODES = {"M_TOO_LARGE", "M_BAD_JSON", "M_NOT_JSON", "M_INVALID_PARAM"}


async def checked(what: str, request: Callable[[], Awaitable[T]]) -> T:
    """One nio request; any failure raised as the bot's own exception, named by ``what``."""
    try:
        response = await request()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise TemporaryTransportError(f"{what}: homeserver unreachable ({describe(exc)})") \
            from exc
    except ValueError as exc:   # a body that is not the JSON nio expected (a proxy page)
        raise TemporaryTransportError(f"{what}: unreadable answer ({type(exc).__name__})") \
            from exc
    except (nio.LocalProtocolError, nio.EncryptionError) as exc:
        raise TemporaryTransportError(f"{what}: {exc}") from exc
    if isinstance(response, nio.ErrorResponse):
        raise error_for(what, response)
    return response


def describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port}"
    return type(exc).__name__


def error_for(what: str, resp: nio.ErrorResponse) -> TransportError:
    transport = getattr(resp, "transport_response", None)
    status = getattr(transport, "status", None)
    code = resp.status_code or ""
    if code == "M_LIMIT_EXCEEDED" or status == 429:
        retry = (resp.retry_after_ms or 5000) / 1000
        return RateLimitedError(f"{what}: rate limited", retry_after=retry)
    if not code.startswith("M_"):
        # No Matrix error code: a proxy or a restarting server answered, not the
        # homeserver's verdict on our request. Worth retrying.
        return TemporaryTransportError(f"{what}: HTTP {status} from the homeserver's address")
    text = f"{what}: {code} {resp.message}".strip()
    if code in ("M_UNKNOWN_TOKEN", "M_MISSING_TOKEN"):
        return AuthError(text)
    if code in ("M_FORBIDDEN", "M_NOT_FOUND"):
        return RoomUnavailableError(text, errcode=code)
    if code in _REJECTED_CODES or status == 413:
        return MessageRejectedError(text)
    return TemporaryTransportError(text)
