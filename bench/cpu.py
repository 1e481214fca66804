"""CPU time per request: of a server's processes (from /proc) and of Redis (INFO cpu).

A figure is the CPU time the server (with its worker processes) or Redis used while wrk ran,
divided by the requests wrk completed. Redis's own figure is what INFO reports as used by
the server process; its INFO commandstats say how many script calls each request made, and
how many Redis commands in all (those the scripts call included): a count, so the same in
every run of the same code, where CPU time moves with what else the machine runs.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    redis: dict[str, float]  # CPU seconds, by Redis server
    script_calls: int
    commands: int  # every command Redis ran, those scripts called included


class Meter:
    """Reads CPU time of a server and of Redis (one, or a Cluster's nodes, by address), and
    Redis's script calls, before and after."""

    def __init__(self, pid: int, redis_urls: list[str]):
        self.pid = pid
        self.clients = {url: redis.Redis.from_url(url) for url in redis_urls}

    def read(self) -> Reading:
        used, calls, commands = {}, 0, 0
        for url, client in self.clients.items():
            cpu = client.info("cpu")
            stats = client.info("commandstats")
            calls += sum(
                stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("fcall", "evalsha")
            )
            commands += sum(v["calls"] for k, v in stats.items() if k.startswith("cmdstat_"))
            used[url] = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
        return Reading(process_seconds(self.pid), used, calls, commands)

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


def per_request(before: Reading, after: Reading, requests: float) -> dict[str, Any]:
    """Microseconds of server and Redis CPU (in all, and by Redis server), and script calls,
    per request."""
    by_server = {
        url: (after.redis[url] - before.redis[url]) / requests * 1e6 for url in after.redis
    }
    return {
        "server_us": (after.server - before.server) / requests * 1e6,
        "redis_us": sum(by_server.values()),
        "redis_us_by_server": by_server,
        "scripts": (after.script_calls - before.script_calls) / requests,
        "redis_commands": (after.commands - before.commands) / requests,
    }
