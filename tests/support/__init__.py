"""Real-parts test harness: a throwaway Synapse, a member's own client, real feed servers.

Used by the test suite and by the demo (``./dev demo``); everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now.

    The port is released before returning, so another process could take it in between;
    good enough on a test machine, and the only way to hand a port to a child process.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# Imported after free_port: the submodules use it.
from tests.support.feedserver import FeedItem, FeedServer, RequestRecord, make_items  # noqa: E402
from tests.support.member import MemberClient  # noqa: E402
from tests.support.synapse import (  # noqa: E402
    DEFAULT_RATE_LIMITS,
    MatrixAPIError,
    RegisteredUser,
    SynapseServer,
)

# Types of the conftest factories, for annotating tests:
# ``async def test_x(new_user: NewUserFactory, member: MemberFactory) -> None``.
NewUserFactory = Callable[..., Awaitable[RegisteredUser]]
MemberFactory = Callable[[RegisteredUser], Awaitable[MemberClient]]

__all__ = [
    "DEFAULT_RATE_LIMITS",
    "FeedItem",
    "FeedServer",
    "MatrixAPIError",
    "MemberClient",
    "MemberFactory",
    "NewUserFactory",
    "RegisteredUser",
    "RequestRecord",
    "SynapseServer",
    "free_port",
    "make_items",
]
