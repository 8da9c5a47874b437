"""Entry images: fetched once (SSRF policy, size cap), recognised by their bytes, tracking
pixels dropped, uploaded to the homeserver's media repository once per URL.

An image is resolved when its delivery is first sent, not when the entry is found: the
homeserver may be down at poll time, and the outbox must keep the item either way. The
message names the picture; the transport asks ``MediaResolver.image`` for it while
encoding the message, and the encoding is stored before the first attempt, so a resend is
identical.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from bot.clock import Clock
from bot.errors import AuthError, FeedError, TemporaryTransportError, TransportError
from bot.feeds.fetch import Fetcher
from bot.store.base import Store
from bot.store.types import MediaRow
from bot.transport.base import Transport

log = logging.getLogger(__name__)

CHECKED_MEMORY = 512     # pictures whose check is remembered (shown by address)
MIN_SIDE = 16            # smaller than this on either side: a tracking pixel or a spacer


class ImageSource(Protocol):
    """Where a transport gets an entry's picture when it first sends it."""

    async def image(self, url: str) -> MediaRow | None: ...

    async def checked(self, url: str) -> bool:
        """Whether the picture passes the checks (fetched under the SSRF policy, a real
        image, not a tracking pixel), for networks that show it by its address."""
        ...


@dataclass(frozen=True, slots=True)
class ImageInfo:
    mimetype: str
    width: int
    height: int


def sniff_image(data: bytes) -> ImageInfo | None:
    """Type and size from the bytes themselves (never from a header a server chose).
    PNG, JPEG, GIF and WebP only: SVG can carry scripts."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24 and data[12:16] == b"IHDR":
        return ImageInfo("image/png", int.from_bytes(data[16:20], "big"),
                         int.from_bytes(data[20:24], "big"))
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return ImageInfo("image/gif", int.from_bytes(data[6:8], "little"),
                         int.from_bytes(data[8:10], "little"))
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        return _webp(data)
    if data[:2] == b"\xff\xd8":
        return _jpeg(data)
    return None


def _webp(data: bytes) -> ImageInfo | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        return ImageInfo("image/webp", 1 + int.from_bytes(data[24:27], "little"),
                         1 + int.from_bytes(data[27:30], "little"))
    if chunk == b"VP8 ":
        return ImageInfo("image/webp", int.from_bytes(data[26:28], "little") & 0x3FFF,
                         int.from_bytes(data[28:30], "little") & 0x3FFF)
    if chunk == b"VP8L" and len(data) >= 25:
        b = data[21:25]
        width = 1 + (((b[1] & 0x3F) << 8) | b[0])
        height = 1 + (((b[3] & 0x0F) << 10) | (b[2] << 2) | ((b[1] & 0xC0) >> 6))
        return ImageInfo("image/webp", width, height)
    return None


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(data: bytes) -> ImageInfo | None:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _SOF:
            return ImageInfo("image/jpeg", int.from_bytes(data[i + 7:i + 9], "big"),
                             int.from_bytes(data[i + 5:i + 7], "big"))
        i += 2 + length
    return None


class MediaResolver:
    def __init__(self, fetcher: Fetcher, transport: Transport, store: Store,
                 clock: Clock) -> None:
        self._fetcher = fetcher          # its own size cap and the SSRF policy
        self._transport = transport
        self._store = store
        self._clock = clock
        # Rooms' workers resolve the same new image at the same moment: one of them
        # fetches and uploads it, the others wait and find it in the cache.
        self._locks: dict[str, asyncio.Lock] = {}
        self._checked: dict[str, bool] = {}      # url -> passed (bounded, newest kept)

    async def image(self, url: str) -> MediaRow | None:
        """The uploaded image for ``url`` (uploaded at most once), or None when there is
        nothing worth showing. Transport errors propagate: the delivery retries later."""
        lock = self._locks.setdefault(url, asyncio.Lock())
        try:
            async with lock:
                return await self._image(url)
        finally:
            # Whoever comes later finds the image in the cache: the lock can go.
            if not lock.locked():
                self._locks.pop(url, None)

    async def _fetch(self, url: str) -> tuple[bytes, ImageInfo | None] | None:
        """The picture's bytes and what they are; None when they could not be fetched."""
        try:
            data = (await self._fetcher.fetch(url)).body or b""
        except FeedError as exc:
            log.info("image %s not shown: %s", url, exc)
            return None
        return data, sniff_image(data)

    async def checked(self, url: str) -> bool:
        known = self._checked.get(url)
        if known is not None:
            return known
        cached = await self._store.media(url)
        if cached is not None and cached.mxc:
            return True
        fetched = await self._fetch(url)
        if fetched is None:
            return False
        passed = _worth_showing(url, fetched[1])
        if len(self._checked) >= CHECKED_MEMORY:
            self._checked.pop(next(iter(self._checked)))
        self._checked[url] = passed
        return passed

    async def _image(self, url: str) -> MediaRow | None:
        cached = await self._store.media(url)
        if cached is not None:
            return cached if cached.mxc else None
        fetched = await self._fetch(url)
        if fetched is None:
            return None      # not cached: the server may be back next time
        data, info = fetched
        if not _worth_showing(url, info) or info is None:
            await self._store.put_media(MediaRow(url, None, None, len(data), None, None),
                                  self._clock.now())
            return None
        name = urlsplit(url).path.rsplit("/", 1)[-1][:100] or "image"
        try:
            mxc = await self._transport.upload_media(data, info.mimetype, name)
        except (TemporaryTransportError, AuthError):
            raise           # worth retrying: the delivery waits
        except TransportError as exc:
            # Refused for good (too large for this homeserver, forbidden): the item goes
            # out without its picture rather than never.
            log.warning("image %s not shown: the homeserver refused it (%s)", url, exc)
            await self._store.put_media(MediaRow(url, None, info.mimetype, len(data), info.width,
                                           info.height), self._clock.now())
            return None
        row = MediaRow(url, mxc, info.mimetype, len(data), info.width, info.height)
        await self._store.put_media(row, self._clock.now())
        return row


def _worth_showing(url: str, info: ImageInfo | None) -> bool:
    """A real picture, not a tracking pixel or a spacer (why not is logged)."""
    if info is None or min(info.width, info.height) < MIN_SIDE:
        why = "not a PNG, JPEG, GIF or WebP image" if info is None else \
            f"{info.width}x{info.height}, a tracking pixel or a spacer"
        log.info("image %s not shown: %s", url, why)
        return False
    return True
