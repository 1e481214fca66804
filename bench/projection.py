"""What a VM of N cores would sustain, projected from the CPU per request measured here.

A projection, not a measurement: it assumes the /exchange load of figure 1, echoes with
``--processes`` using every core that Redis leaves free, one Redis on the same VM, CPU time
per request that stays what it was on the measuring machine whatever the number of
processes, and clients, load balancer and proxy on other machines. Redis runs commands on
one thread, so whatever the cores, it serves at most one core's worth of its CPU per request.
"""

from typing import Any

CORES = (2, 4, 8, 16)


def project(server_us: float, redis_us: float, cores: int) -> dict[str, Any]:
    """The /exchange rate ``cores`` cores sustain, and what bounds it."""
    by_cores = cores * 1e6 / (server_us + redis_us)  # every core busy, Redis's included
    by_redis = 1e6 / redis_us  # Redis's one thread busy
    rate = min(by_cores, by_redis)
    return {
        "cores": cores,
        "rps": rate,
        "bound": "Redis's one thread" if by_redis <= by_cores else "all cores",
        "redis_core": rate * redis_us / 1e6,
        "echoes_cores": rate * server_us / 1e6,
    }


def redis_bound_cores(server_us: float, redis_us: float) -> float:
    """The number of cores past which the single Redis, not the cores, bounds the rate."""
    return (server_us + redis_us) / redis_us
