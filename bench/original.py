"""The original implementation's storage algorithm, as the baseline of receive cost.

One SETEX per copy under ``<dest>:<origin>:<key>``; a receive SCANs the whole keyspace with
MATCH ``<dest>:*`` and COUNT 50, then MGET and DEL: its cost grows with everything stored.
"""

import redis.asyncio as aioredis

TTL = 3600


class Original:
    def __init__(self, client: aioredis.Redis):
        self.client = client

    async def send(self, destination: str, key: str, record: bytes) -> None:
        await self.client.setex(f"{destination}:sender:{key}", TTL, record)

    async def receive(self, reader: str) -> list[bytes]:
        keys = [key async for key in self.client.scan_iter(match=f"{reader}:*", count=50)]
        if not keys:
            return []
        records = await self.client.mget(keys)
        await self.client.delete(*keys)
        return [r for r in records if r is not None]

    async def fill(self, start: int, stop: int, users: int) -> None:
        """Store records start..stop-1 for ``users`` other users, pipelined."""
        for base in range(start, stop, 5000):
            async with self.client.pipeline(transaction=False) as pipe:
                for i in range(base, min(base + 5000, stop)):
                    pipe.setex(f"user{i % users}:sender:fill-{i:012d}", TTL, b"x" * 100)
                await pipe.execute()
