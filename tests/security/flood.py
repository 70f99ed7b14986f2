"""A flood of wrong secrets for a known key id, from its own process and address.

`python -m tests.security.flood URL KEY_ID SOURCE CONNECTIONS` opens CONNECTIONS
connections from SOURCE (a local address such as 127.0.0.2). Told `go` on its
stdin, each sends `GET /api/models` with `sy_KEY_ID_<a new random secret>` back to
back, and `flooding` is printed once an answer is in; told `pause`, they stop and
`paused` is printed once none is waiting. When stdin closes it waits for the
answers still due, then prints one JSON line: how many it got of each status.

Its own process, so its work never holds the test's interpreter lock while the
test measures a legitimate client.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
from collections import Counter

import httpx


async def flood(url: str, key_id: str, source: str, connections: int) -> Counter[int]:
    loop = asyncio.get_running_loop()
    going, announce, quiet = asyncio.Event(), asyncio.Event(), asyncio.Event()
    statuses: Counter[int] = Counter()
    busy = 0
    transport = httpx.AsyncHTTPTransport(
        local_address=source,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )
    async with httpx.AsyncClient(base_url=url, transport=transport, timeout=120) as http:

        async def one_connection() -> None:
            nonlocal busy
            while True:
                await going.wait()
                busy += 1
                quiet.clear()
                token = f"sy_{key_id}_{secrets.token_urlsafe(32)}"
                try:
                    answer = await http.get(
                        "/api/models", headers={"authorization": f"Bearer {token}"}
                    )
                    statuses[answer.status_code] += 1
                finally:
                    busy -= 1
                    if not busy:
                        quiet.set()
                if announce.is_set():
                    announce.clear()
                    print("flooding", flush=True)

        senders = [asyncio.create_task(one_connection()) for _ in range(connections)]
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            if line.strip() == "go":
                announce.set()
                going.set()
            elif line.strip() == "pause":
                going.clear()
                if busy:
                    await quiet.wait()
                print("paused", flush=True)
        going.clear()  # stdin closed: let every request in flight get its answer counted
        if busy:
            await quiet.wait()
        for sender in senders:
            sender.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
    return statuses


def main() -> None:
    url, key_id, source, connections = sys.argv[1:5]
    statuses = asyncio.run(flood(url, key_id, source, int(connections)))
    print(json.dumps({str(status): count for status, count in statuses.items()}), flush=True)


if __name__ == "__main__":
    main()
