"""The floor of line 6: a bare process doing what any such bot must, and nothing more.

matrix-nio with encryption on (its Olm machine on a store of its own, keys uploaded),
one sync, and one conditional GET of each feed URL through aiohttp (8 at once), the
validators kept; then it idles, and the bench reads its resident memory like newsbot's.

    python -m benchmarks.bare_client HOMESERVER USER_ID DEVICE_ID STORE_DIR URLS_FILE
    (the access token in BENCH_TOKEN; URLS_FILE: one "url etag" per line)
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import aiohttp
import nio


async def main(homeserver: str, user_id: str, device_id: str, store: Path,
               feeds: list[list[str]]) -> None:
    client = nio.AsyncClient(homeserver, user_id, device_id=device_id, store_path=str(store),
                             config=nio.AsyncClientConfig(encryption_enabled=True))
    client.restore_login(user_id, device_id, os.environ["BENCH_TOKEN"])
    answer = await client.sync(timeout=0, full_state=True)
    if not isinstance(answer, nio.SyncResponse):
        raise SystemExit(f"sync failed: {answer}")
    if client.should_upload_keys:
        await client.keys_upload()
    validators: dict[str, str | None] = {}
    limiter = asyncio.Semaphore(8)
    async with aiohttp.ClientSession() as session:

        async def one(url: str, etag: str) -> None:
            async with limiter, session.get(url, headers={"If-None-Match": etag}) as resp:
                await resp.read()
                validators[url] = resp.headers.get("ETag")

        await asyncio.gather(*(one(url, etag) for url, etag in feeds))
        print(f"ready {len(validators)}", flush=True)
        await asyncio.Event().wait()        # idle until killed


if __name__ == "__main__":
    home, user, device, store_dir, urls = sys.argv[1:6]
    Path(store_dir).mkdir(parents=True, exist_ok=True)
    lines = Path(urls).read_text().splitlines()
    asyncio.run(main(home, user, device, Path(store_dir),
                     [line.split(" ", 1) for line in lines if line]))
