"""Several instances on one database (PostgreSQL): who this instance is, and what it leads.

Each instance has its own Matrix device (its session in ``storage.path``) and its own name
(an ``instance`` file there, so a restarted instance takes its own claims back at once).
What must be done by one instance at a time is held under a lease in the database: the
leadership (commands, invitations, welcomes, digests, WebSub subscriptions), each feed's
poll, each outbox row being sent. A lease has an expiry: an instance that dies (or stops
answering, e.g. frozen) loses it when it lapses, and another takes it.

A store that is not shared (SQLite) makes this instance the leader for good, with no
lease and no task: nothing changes for a single deployment.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
import socket
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from bot.clock import Clock
from bot.errors import StorageError
from bot.filemodes import private_dir, private_file
from bot.store import Store

log = logging.getLogger(__name__)

INSTANCE_FILE = "instance"
LEADER_LEASE = "leader"
# A dead leader is replaced within this (storage.lease); renewed three times per lease,
# so one slow renewal (a busy database) does not lose it.
LEADER_SECONDS = 30.0
# Commands seen by an instance that does not lead, kept this many leases: if the leader
# died before answering them, the next leader answers (each is taken once, by one).
FOLLOWER_MEMORY_LEASES = 2
FOLLOWER_MEMORY_MAX = 200


def instance_name(directory: Path) -> str:
    """This instance's name, made once and kept in its own storage directory."""
    path = directory / INSTANCE_FILE
    try:
        private_dir(directory)      # with PostgreSQL, nothing else made it yet
        name = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        name = ""
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror}") from exc
    if name:
        return name
    host = "".join(c for c in socket.gethostname() if c.isalnum() or c in "-.")[:40] or "host"
    name = f"{host}-{secrets.token_hex(4)}"
    try:
        private_file(path)
        path.write_text(name + "\n", encoding="utf-8")
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror}; the storage directory "
                           "must be writable by the bot") from exc
    return name


class Leadership:
    """Whether this instance leads, kept true only while its lease in the store holds."""

    def __init__(self, store: Store, clock: Clock, owner: str, *,
                 duration: float = LEADER_SECONDS,
                 on_lead: Callable[[], None] | None = None) -> None:
        self._store = store
        self._on_lead = on_lead
        self._clock = clock
        self.owner = owner
        self._duration = duration
        self._shared = store.shared
        self._until = 0.0                      # the lease's end as we last took it
        self._became = asyncio.Event()
        self._lost = asyncio.Event()
        if not self._shared:
            self._until = float("inf")
            self._became.set()

    @property
    def leads(self) -> bool:
        # Checked against the clock, not only the last renewal: a process frozen past its
        # lease must not act as leader when it wakes, before its renewal fails.
        return self._clock.now() < self._until

    async def run(self) -> None:
        """Take and renew the lease, for good (a store not shared: return at once)."""
        if not self._shared:
            return
        try:
            while True:
                now = self._clock.now()
                held = await self._store.take_lease(LEADER_LEASE, self.owner, now=now,
                                                    duration=self._duration)
                was = self._became.is_set()
                if held:
                    self._until = now + self._duration
                    if not was:
                        log.info("instance %s now leads (commands, invitations, welcomes, "
                                 "digests)", self.owner)
                        self._lost.clear()
                        self._became.set()
                        if self._on_lead is not None:
                            self._on_lead()
                else:
                    self._until = 0.0
                    if was:
                        log.warning("instance %s no longer leads (another instance took the "
                                    "lease)", self.owner)
                        self._became.clear()
                        self._lost.set()
                await asyncio.sleep(self._duration / 3)
        finally:
            if self._shared and self._until > self._clock.now():
                # Handed over at once on a clean stop instead of at the lease's end.
                with contextlib.suppress(StorageError, OSError):
                    await asyncio.shield(self._store.release_lease(LEADER_LEASE, self.owner))

    async def while_leading(self, name: str,
                            work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``work`` while this instance leads: started when it becomes leader,
        cancelled when it stops leading, started again when it leads again."""
        while True:
            await self._became.wait()
            task = asyncio.create_task(work(), name=name)
            lost = asyncio.create_task(self._lost.wait())
            try:
                await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                lost.cancel()
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if task.done() and not task.cancelled():
                task.result()       # its failure is the tree's
                return


class FollowerMemory:
    """What an instance that does not lead saw (commands): kept briefly, so that a new
    leader answers those its dead predecessor left unanswered."""

    def __init__(self, clock: Clock, lease: float = LEADER_SECONDS) -> None:
        self._clock = clock
        self._memory = FOLLOWER_MEMORY_LEASES * lease
        self._seen: collections.deque[tuple[float, Callable[[], None]]] = collections.deque(
            maxlen=FOLLOWER_MEMORY_MAX)

    def keep(self, replay: Callable[[], None]) -> None:
        self._seen.append((self._clock.now(), replay))

    def replay(self) -> int:
        """Hand what is still recent to the features; forget the rest."""
        horizon = self._clock.now() - self._memory
        recent = [replay for at, replay in self._seen if at >= horizon]
        self._seen.clear()
        for replay in recent:
            replay()
        return len(recent)


def taken_once(store: Store, owner: str, clock: Clock,
               kind: str) -> Callable[[str], Awaitable[bool]]:
    """Whether this instance is the one to act on an event (by its id): the first to take
    it. A store not shared: always (nothing else could)."""
    async def first(event_id: str) -> bool:
        if not store.shared:
            return True
        return await store.take_once(f"{kind}:{event_id}", owner, clock.now())
    return first


class PollLeases:
    """Several instances: each feed is polled by one instance at a time, under a lease
    held for that poll; between them, once per interval (an instance whose turn comes
    after another polled the feed waits for the next poll that one timed)."""

    def __init__(self, store: Store, clock: Clock, owner: str, *, duration: float,
                 retry: float) -> None:
        self._store = store
        self._clock = clock
        self._owner = owner
        self.duration = duration        # long enough for one poll (its fetch's timeout)
        self.retry = retry              # how soon to look again when another polls it

    async def take(self, feed: str) -> bool:
        return await self._store.take_lease(f"feed:{feed}", self._owner,
                                            now=self._clock.now(), duration=self.duration)

    async def release(self, feed: str) -> None:
        await self._store.release_lease(f"feed:{feed}", self._owner)
