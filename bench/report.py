"""The results of ``python -m bench`` as markdown: each figure beside its baseline and target."""

from dataclasses import dataclass
from typing import Any

from . import projection


@dataclass(frozen=True)
class Target:
    """A figure's bound, and which issue set it."""

    figure: str
    limit: float
    at_most: bool
    source: str

    def holds(self, value: float) -> bool:
        return value <= self.limit if self.at_most else value >= self.limit

    def text(self) -> str:
        return f"{'<=' if self.at_most else '>='} {self.limit:g}"


# The targets, by the figure they bound (measured() computes each figure). Issue 9 bounded
# Redis's CPU per /exchange at 80 us on a machine where the ceiling's one script cost 21-27
# us of Redis CPU: 3.3 times the ceiling's, the form that carries from machine to machine.
# Its wake-up bounds are 1.5 times the p99 in BENCHMARKS.md before it (1.83 and 140.6 ms).
# Issue 24 bounds echoes as shipped (log level info, an access line per request); the
# earlier targets were set for --log-level=warning and are kept for the same figures.
TARGETS: dict[str, list[Target]] = {
    "throughput_ratio": [
        Target("/exchange throughput, echoes / ceiling", 0.8, False, "first benchmarks"),
        Target("/exchange throughput, echoes / ceiling", 0.65, False, "issue 9"),
        Target("/exchange throughput, echoes / ceiling", 0.75, False, "issue 24"),
    ],
    "server_cpu_ratio": [
        Target("echoes CPU per /exchange / ceiling's", 1.6, True, "issue 9"),
        Target("echoes CPU per /exchange / ceiling's", 1.25, True, "issue 24"),
    ],
    "access_log_cost": [
        Target("access log's cost: 1 - info's rate / warning's", 0.05, True, "issue 24"),
    ],
    "redis_cpu_ratio": [
        Target("Redis CPU per /exchange / ceiling's", 3.3, True, "issue 9 (80 us)"),
    ],
    "flat_ratio": [Target("POST /receive at 1M stored / at 1k", 1.2, True, "first benchmarks")],
    "wake_p50_ms_1000": [Target("wake-up p50 at 1,000 waiters, ms", 1.0, True, "long poll")],
    "wake_p99_ms_1000": [
        Target("wake-up p99 at 1,000 waiters, ms", 5.0, True, "long poll"),
        Target("wake-up p99 at 1,000 waiters, ms", 2.7, True, "issue 9"),
    ],
    "wake_p99_ms_10000": [
        Target("wake-up p99 at 10,000 waiters, ms", 20.0, True, "long poll, issue 24"),
        Target("wake-up p99 at 10,000 waiters, ms", 211.0, True, "issue 9"),
    ],
    "rss_mb_10000": [
        Target("RSS of one process holding 10,000 waiters, MB", 200, True, "issue 9, issue 24")
    ],
}


def measured(r: dict[str, Any]) -> dict[str, float]:
    """Each bounded figure of a run."""
    t = r["throughput"]
    echoes, ceiling = t["echoes"], t["ceiling"]
    first, last = r["receive_cost"][0], r["receive_cost"][-1]
    wake = {row["waiters"]: row for row in r["wakeup"]["echoes"]}
    values = {
        "throughput_ratio": echoes["rps"] / ceiling["rps"],
        "server_cpu_ratio": echoes["server_us"] / ceiling["server_us"],
        "redis_cpu_ratio": echoes["redis_us"] / ceiling["redis_us"],
        "flat_ratio": last["echoes_http_ms"] / first["echoes_http_ms"],
        "access_log_cost": access_log_cost(t),
    }
    for count in (1000, 10000):
        if count in wake:
            values[f"wake_p50_ms_{count}"] = wake[count]["p50_ms"]
            values[f"wake_p99_ms_{count}"] = wake[count]["p99_ms"]
            values[f"rss_mb_{count}"] = wake[count]["rss_mb"]
    return {key: value for key, value in values.items() if key in TARGETS}


def access_log_cost(t: dict[str, Any]) -> float:
    """The share of /exchange's rate the access lines take: echoes at log level info (as
    shipped) against echoes at warning, in the same run."""
    return 1 - t["echoes"]["rps"] / t["echoes_warning"]["rps"]


def report(r: dict[str, Any]) -> str:
    """Every table of a run."""
    parts = [
        f"`{r['command']}` on {r.get('redis_server', 'redis-server')}",
        throughput(r["throughput"]),
        cores(r["throughput"]),
        receive_cost(r["receive_cost"]),
        wakeups(r["wakeup"]),
        memory(r["memory"]),
        targets(measured(r)),
    ]
    return "\n\n".join(parts)


def throughput(t: dict[str, Any]) -> str:
    ceiling = t["ceiling"]
    lines = [
        "| 1, 6. POST /exchange, wrk -t1 -c32 | req/s | p50 ms | p99 ms | vs ceiling"
        " | server CPU us/req | Redis CPU us/req | script calls/req |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in t.items():
        lines.append(
            f"| {name} | {row['rps']:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f}"
            f" | {row['rps'] / ceiling['rps']:.2f} | {row['server_us']:.0f}"
            f" | {row['redis_us']:.0f} | {row['scripts']:.2f} |"
        )
    echoes, quiet = t["echoes"], t["echoes_warning"]
    lines += [
        "",
        f"echoes (log level info, as shipped) / ceiling: throughput"
        f" **{echoes['rps'] / ceiling['rps']:.2f}**, server CPU per request"
        f" **{echoes['server_us'] / ceiling['server_us']:.2f}**, Redis CPU per request"
        f" **{echoes['redis_us'] / ceiling['redis_us']:.2f}**; at warning (no access lines):"
        f" throughput {quiet['rps'] / ceiling['rps']:.2f}, server CPU per request"
        f" {quiet['server_us'] / ceiling['server_us']:.2f}; the access log's cost"
        f" **{access_log_cost(t):.1%}** of the rate,"
        f" {echoes['server_us'] - quiet['server_us']:.0f} us of CPU per request;"
        f" 2 processes / 1 process: **{t['echoes_2_processes']['rps'] / echoes['rps']:.2f}**",
    ]
    return "\n".join(lines)


def cores(t: dict[str, Any]) -> str:
    """The projection to larger VMs, from echoes' and Redis's CPU per request above."""
    server_us, redis_us = t["echoes"]["server_us"], t["echoes"]["redis_us"]
    lines = [
        f"Projection, not a measurement (bench/projection.py says what it assumes): with"
        f" {server_us:.0f} us of echoes CPU and {redis_us:.0f} us of Redis CPU per /exchange,"
        f" a VM running echoes with --processes and one Redis sustains about:",
        "",
        "| cores | /exchange per second | bound by | Redis's thread busy | echoes cores busy |",
        "| --- | --- | --- | --- | --- |",
    ]
    for count in projection.CORES:
        p = projection.project(server_us, redis_us, count)
        lines.append(
            f"| {count} | {p['rps']:,.0f} | {p['bound']} | {p['redis_core']:.0%}"
            f" | {p['echoes_cores']:.1f} |"
        )
    bound = projection.redis_bound_cores(server_us, redis_us)
    lines += [
        "",
        f"Past about {bound:.0f} cores the single Redis is the bound, at"
        f" {1e6 / redis_us:,.0f} /exchange per second: more takes Redis Cluster.",
    ]
    return "\n".join(lines)


def receive_cost(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| 2. stored for others | echoes take (store) ms | echoes POST /receive ms"
        " | original (SCAN) ms |",
        "| --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['stored']:,} | {row['echoes_store_ms']:.3f} | {row['echoes_http_ms']:.3f}"
            f" | {row['original_ms']:.3f} |"
        )
    first, last = rows[0], rows[-1]
    lines += [
        "",
        f"largest / smallest: echoes POST /receive"
        f" **{last['echoes_http_ms'] / first['echoes_http_ms']:.2f}**, echoes take"
        f" {last['echoes_store_ms'] / first['echoes_store_ms']:.2f}, original"
        f" **{last['original_ms'] / first['original_ms']:.0f}**",
    ]
    return "\n".join(lines)


def wakeups(w: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        "| 3, 4. waiting requests | echoes p50 ms | echoes p99 ms | echoes RSS MB"
        " | Nchan p50 ms | Nchan p99 ms | Nchan worker RSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    nchan = {row["waiters"]: row for row in w["nchan"]}
    for row in w["echoes"]:
        n = nchan.get(row["waiters"])
        other = f"{n['p50_ms']:.2f} | {n['p99_ms']:.2f} | {n['rss_mb']:.0f}" if n else "- | - | -"
        lines.append(
            f"| {row['waiters']:,} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f}"
            f" | {row['rss_mb']:.0f} | {other} |"
        )
    return "\n".join(lines)


def memory(m: dict[str, Any]) -> str:
    return (
        f"5. Redis memory per stored record ({m['records']:,} records, 100-byte body):"
        f" **{m['bytes_per_record']:.0f} bytes** beside a {m['payload']}-byte payload"
    )


def targets(values: dict[str, float]) -> str:
    lines = ["| figure | target | set by | measured | holds? |", "| --- | --- | --- | --- | --- |"]
    for key, bounds in TARGETS.items():
        if key not in values:
            continue  # not measured in this run (--quick, --waiters)
        for target in bounds:
            holds = "yes" if target.holds(values[key]) else "**no**"
            lines.append(
                f"| {target.figure} | {target.text()} | {target.source}"
                f" | {values[key]:.{3 if key == 'access_log_cost' else 2}f} | {holds} |"
            )
    return "\n".join(lines)
