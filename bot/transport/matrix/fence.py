"""A send's fence, asked at the last moment a request can still be held back: when its
bytes are handed to the kernel.

Several instances share an outbox: an instance sends a row only while its claim on it
holds, and once the claim lapses another instance may send the row from its own device.
Asking the claim before the request is not enough: between that question and the
socket's write lie nio's encoding, aiohttp's connection pool and a turn of the event loop
for every other room's worker, and a process frozen there (SIGSTOP, a suspended VM, a
swap storm) would, once woken, send a message its successor already sent. So the
connections of the client write through ``FencedTransport``, which asks the fence of the
send under way (a context variable: each worker task has its own, and the tasks aiohttp
starts for a request inherit it) right before each write, and closes the connection
unwritten when the claim has lapsed. Bytes handed to the kernel go out even while the
process is frozen, so what is left is the few instructions between the question and the
write.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import Any

import nio

# The fence of the send this task is making (None: a request with no fence).
_FENCE: ContextVar[Callable[[], bool] | None] = ContextVar("newsbot_send_fence", default=None)


class FenceClosedError(ConnectionAbortedError):
    """A request held back, unwritten, because the send's claim lapsed."""


class FencedTransport:
    """An asyncio transport whose writes first ask the fence of the send under way."""

    def __init__(self, inner: asyncio.Transport) -> None:
        self._inner = inner

    def write(self, data: Any) -> None:
        self._check()
        self._inner.write(data)

    def writelines(self, chunks: Iterable[Any]) -> None:
        self._check()
        self._inner.writelines(chunks)

    def _check(self) -> None:
        fence = _FENCE.get()
        if fence is not None and not fence():
            # Nothing of the request may leave: the connection goes, unwritten.
            self._inner.abort()
            raise FenceClosedError("the send's claim lapsed before its request was written")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@contextlib.contextmanager
def fenced(client: nio.AsyncClient, fence: Callable[[], bool]) -> Iterator[None]:
    """The requests made within (in this task and the tasks it starts) write only while
    ``fence()`` holds."""
    _fence_connections(client)
    token = _FENCE.set(fence)
    try:
        yield
    finally:
        _FENCE.reset(token)


def _fence_connections(client: nio.AsyncClient) -> None:
    """Every connection the client's session hands out writes through FencedTransport.
    nio makes its session on the first request (the login, long before any fenced send);
    a session made anew later is wrapped at the next fenced send."""
    session = client.client_session
    connector = session.connector if session is not None else None
    if connector is None or getattr(connector.connect, "fences", False):
        return
    connect = connector.connect

    async def connect_fenced(*args: Any, **kwargs: Any) -> Any:
        connection = await connect(*args, **kwargs)
        protocol = connection.protocol
        transport = getattr(protocol, "transport", None)
        if transport is not None and not isinstance(transport, FencedTransport):
            protocol.transport = FencedTransport(transport)
        return connection

    connect_fenced.fences = True            # type: ignore[attr-defined]
    connector.connect = connect_fenced
