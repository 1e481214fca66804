"""Prometheus metrics (prometheus-client), served at GET /metrics.

With --processes, __main__ points PROMETHEUS_MULTIPROC_DIR at a fresh directory before
prometheus_client is first imported; every worker writes its values there, and whichever worker
answers a scrape reports the sum over all of them (waiters: over the live ones). The process_*
metrics are per worker then, labelled by pid. No *_created series: they double the series of
every counter and no alert or dashboard of echoes reads them. Alert rules on these metrics:
conf/echoes-alerts.yml.
"""

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from . import __version__
from .config import METRICS_DIR_ENV, Settings

disable_created_metrics()

__all__ = ["Metrics", "mark_process_dead"]
CONTENT_TYPE = CONTENT_TYPE_LATEST
# The limits reported as echoes_limit, and the refusals counted by echoes_refusals.
LIMITS = (
    "max_sender_bytes",
    "sender_rate",
    "sender_burst",
    "max_bytes_in_flight",
    "max_caller_bytes_in_flight",
)
REFUSALS = ("sender_rate", "sender_bytes", "caller_in_flight", "process_in_flight")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class WorkerProcess:
    """process_* of one worker where they cannot be summed (several processes): gauges
    labelled by pid, refreshed from ProcessCollector by each worker (see server.py)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._source = ProcessCollector(registry=None)
        self._gauges = {
            sample.name: Gauge(
                sample.name, family.documentation, registry=registry, multiprocess_mode="liveall"
            )
            for family in self._source.collect()
            for sample in family.samples
        }
        self.refresh()

    def refresh(self) -> None:
        """Read this process's figures from /proc into the gauges."""
        for family in self._source.collect():
            for sample in family.samples:
                self._gauges[sample.name].set(sample.value)


class Metrics:
    """The metrics of one echoes process."""

    def __init__(self, wake_mode: str, max_waiters: int = 0) -> None:
        r = self.registry = CollectorRegistry()
        several = bool(os.environ.get(METRICS_DIR_ENV))
        self.process = WorkerProcess(r) if several else None
        if not several:
            ProcessCollector(registry=r)
        build = Gauge(
            "echoes_build_info",
            "The running version",
            ["version"],
            registry=r,
            multiprocess_mode="max",
        )
        build.labels(__version__).set(1)
        self.requests = Counter(
            "echoes_requests", "HTTP requests answered", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "echoes_request_duration_seconds",
            "Time to answer a request; long polls (?wait=) apart, as waited=yes",
            ["endpoint", "waited"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.sent = Counter("echoes_records_sent", "Message copies stored", registry=r)
        self.received = Counter("echoes_records_received", "Records handed to readers", registry=r)
        self.acked = Counter("echoes_acks_queued", "Acks queued for senders", registry=r)
        self.redis_errors = Counter(
            "echoes_redis_errors", "Requests that failed on Redis", ["kind"], registry=r
        )
        self.waiters = Gauge(
            "echoes_waiters",
            "Requests waiting for a record",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.waiters_limit = waiters_limit = Gauge(
            "echoes_waiters_limit",
            "Most requests that may wait (--max-waiters, summed over processes)",
            multiprocess_mode="livesum",
            registry=r,
        )
        waiters_limit.set(max_waiters)
        self.redis_memory = Gauge(
            "echoes_redis_memory_bytes",
            "Redis's used_memory and its maxmemory (0: no limit), read at each scrape, by server",
            ["kind", "server"],
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.redis_up = Gauge(
            "echoes_redis_up",
            "Whether each Redis server (a Cluster's primaries) answered the last scrape",
            ["server"],
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.redis_replicas = Gauge(
            "echoes_redis_replicas",
            "Replicas connected to each Redis primary, read at each scrape",
            ["server"],
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.redis_shard_ok = Gauge(
            "echoes_redis_shard_writable",
            "Whether each primary has the replicas --redis-wait-replicas needs and says its"
            " cluster is up (0: its writes are answered 503), read at each scrape",
            ["server"],
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.failovers = Counter(
            "echoes_redis_failovers",
            "Primaries replaced (a Cluster's or Sentinel's failover), as this process saw them",
            registry=r,
        )
        self.wakeups = Counter("echoes_wakeups", "Waiting requests woken", registry=r)
        self.subscriptions = Gauge(
            "echoes_listener_subscriptions",
            "Inboxes the wake-up listener subscribes to (those with waiters, and lingering)",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.slow_readers = Counter(
            "echoes_slow_readers",
            "Connections cut off for not reading their answer within --write-timeout",
            registry=r,
        )
        self.accept_paused = Counter(
            "echoes_accept_paused",
            "Times accepting connections was paused: no file descriptor left (EMFILE)",
            registry=r,
        )
        self.reconnects = Counter(
            "echoes_listener_reconnects", "Times the wake-up listener lost Redis", registry=r
        )
        self.listener_connected = Gauge(
            "echoes_listener_connected",
            "1 while the wake-up listener is subscribed (with processes: the least of them)",
            multiprocess_mode="livemin",
            registry=r,
        )
        self.wake_mode = Gauge(
            "echoes_wake_mode",
            "How waiting requests are woken",
            ["mode"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.wake_mode.labels(wake_mode).set(1)
        self.refusals = Counter(
            "echoes_refusals",
            "Requests refused by a limit on one sender or caller (429) or on the process (503),"
            " by limit: sender_rate, sender_bytes, caller_in_flight, process_in_flight",
            ["limit"],
            registry=r,
        )
        for limit in REFUSALS:
            self.refusals.labels(limit)
        self.limits = Gauge(
            "echoes_limit",
            "The limits on one sender, one caller and one process, by option (0: none)",
            ["option"],
            multiprocess_mode="max",
            registry=r,
        )
        self.bytes_in_flight = Gauge(
            "echoes_bytes_in_flight",
            "Bytes of requests held in flight (bodies, what they may store), summed over processes",
            multiprocess_mode="livesum",
            registry=r,
        )

    def configure(self, settings: Settings) -> None:
        """Report the limits of ``settings``."""
        self.waiters_limit.set(settings.max_waiters)
        for name in LIMITS:
            self.limits.labels(name).set(getattr(settings, name))

    def exposition(self) -> bytes:
        """The text format of every metric, summed over processes when there are several."""
        if self.process:
            self.process.refresh()
        if os.environ.get(METRICS_DIR_ENV):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
