"""CPU time per request: of a server's processes (from /proc) and of Redis (INFO cpu).

A figure is the CPU time the server (with its worker processes) or Redis used while wrk ran,
divided by the requests wrk completed. Redis's own figure is what INFO reports as used by
the server process; its INFO commandstats say how many script calls each request made.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import redis

TICKS = os.sysconf("SC_CLK_TCK")


def process_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` and every process below it."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue  # it exited meanwhile
        total += (int(fields[11]) + int(fields[12])) / TICKS
        pending += [int(child) for child in children]
    return total


@dataclass
class Reading:
    server: float  # CPU seconds
    redis: float
    script_calls: int


class Meter:
    """Reads CPU time of a server and of Redis, and Redis's script calls, before and after."""

    def __init__(self, pid: int, redis_url: str):
        self.pid = pid
        self.client = redis.Redis.from_url(redis_url)

    def read(self) -> Reading:
        cpu = self.client.info("cpu")
        stats = self.client.info("commandstats")
        calls = sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("fcall", "evalsha"))
        used = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
        return Reading(process_seconds(self.pid), used, calls)

    def close(self) -> None:
        self.client.close()


def per_request(before: Reading, after: Reading, requests: float) -> dict[str, float]:
    """Microseconds of server and Redis CPU, and script calls, per request."""
    return {
        "server_us": (after.server - before.server) / requests * 1e6,
        "redis_us": (after.redis - before.redis) / requests * 1e6,
        "scripts": (after.script_calls - before.script_calls) / requests,
    }
