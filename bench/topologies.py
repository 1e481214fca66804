"""Redis Cluster and Redis Sentinel on loopback, from the same redis-server binary.

Used by the tests (tests/test_topologies.py) and the benchmarks (bench/cluster.py,
bench/partition.py); each starts and stops its own. Ports are below 55535, so that a cluster
node's bus port (its port + 10000) is a valid port too. ``Cluster(addresses=True)`` gives
each node a loopback address of its own (127.0.42.N, for --bind and --bind-source-addr), so
that firewall rules can cut the links between nodes (bench/partition.py); the harness's own
clients then reach each node on its unix socket, which no rule cuts.
"""

import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from echoes.embedded import RedisServer, find_binary

NODE_TIMEOUT_MS = 2000  # how long a primary may be silent before its replica takes over
MASTER_NAME = "echoes"


NODE_NETWORK = "127.0.42."  # Cluster(addresses=True): node N at 127.0.42.N (loopback)


def free_port_pair(host: str = "127.0.0.1") -> int:
    """A free loopback port below 55535 whose port + 10000 is free too (a cluster bus)."""
    for _ in range(1000):
        port = random.randrange(20000, 55535)
        if all(_free(p, host) for p in (port, port + 10000)):
            return port
    raise RuntimeError("no free port pair")


def _free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def redis_cli() -> str:
    """The redis-cli next to the redis-server in use, else the one on PATH (redis-tools)."""
    beside = Path(find_binary()).with_name("redis-cli")
    return str(beside) if beside.exists() else shutil.which("redis-cli") or "redis-cli"


def cluster_command(*args: str) -> str:
    """``redis-cli --cluster ARGS...``; its output, or an error that carries it."""
    result = subprocess.run(
        [redis_cli(), "--cluster", *args], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"redis-cli --cluster {' '.join(args)} exited {result.returncode}:\n"
            f"{result.stdout[-3000:]}{result.stderr[-2000:]}"
        )
    return result.stdout


def wait_until(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {timeout} s: no")
        time.sleep(0.1)


@dataclass
class Node:
    """One redis-server on a TCP port of loopback (and a unix socket in its directory)."""

    port: int
    server: RedisServer
    _client: redis.Redis | None = None
    host: str = "127.0.0.1"
    by_socket: bool = False  # the harness's client uses the unix socket (no rule cuts it)

    def client(self) -> redis.Redis:
        """A client of this node (one, kept until close())."""
        if self._client is None:
            if self.by_socket:
                path = str(self.server.socket)
                self._client = redis.Redis(unix_socket_path=path, socket_timeout=5)
            else:
                self._client = redis.Redis(host=self.host, port=self.port, socket_timeout=5)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def kill(self) -> None:
        """SIGKILL, as a machine that dies: nothing flushed."""
        self.close()
        process = self.server.process
        if process and process.poll() is None:
            process.kill()
            process.wait()
        self.server.process = None

    def restart(self) -> None:
        self.server.start()


def start_node(directory: Path, port: int, host: str = "", **options: str) -> Node:
    """A redis-server on ``port`` (and, given ``host``, bound to it alone, its own
    connections leaving from it too), started (not yet answering)."""
    if host:
        # protected-mode counts only 127.0.0.1 as loopback; the node is bound to loopback anyway
        options = {"bind": host, "bind_source_addr": host, "protected_mode": "no", **options}
    server = RedisServer(
        directory / f"{host}-{port}" if host else directory / str(port), port=str(port), **options
    )
    server.spawn()
    return Node(port, server, host=host or "127.0.0.1", by_socket=bool(host))


def in_sync(node: Node) -> bool:
    """Whether ``node`` is a replica whose link to its primary is up."""
    info = node.client().info("replication")
    return info.get("role") == "slave" and info.get("master_link_status") == "up"


@dataclass
class Cluster:
    """Three primaries with ``replicas`` replicas each (redis-cli --cluster create)."""

    directory: Path
    nodes: list[Node] = field(default_factory=list)
    library_copied: bool = False  # add_shard: the new primary got the function library
    replicas: int = 1
    addresses: bool = False  # each node on a loopback address of its own (NODE_NETWORK)

    def start(self, primaries: int = 3, **options: str) -> "Cluster":
        """Start the nodes (``options``: more redis-server settings) and make the cluster."""
        self.nodes = []
        for _ in range(primaries * (1 + self.replicas)):
            self.nodes.append(self._spawn(**options))  # _spawn numbers its address by count
        for node in self.nodes:
            wait_until(node.server.ping, 15, f"node {node.port} answers")
        addresses = [n.address for n in self.nodes]
        replicas = str(self.replicas)
        cluster_command("create", *addresses, "--cluster-replicas", replicas, "--cluster-yes")
        wait_until(self.healthy, 30, "the cluster is ok on every node")
        # A replica that never synced refuses to take over (cluster-replica-validity-factor).
        wait_until(self.replicas_in_sync, 30, "every replica is in sync")
        return self

    def add_shard(self, **options: str) -> Node:
        """A new primary (and its replica), given slots by rebalancing: keys move under
        MIGRATE, clients meet ASK and TRYAGAIN meanwhile. The new primary."""
        primary, replica = self._spawn(**options), self._spawn(**options)
        for node in (primary, replica):
            wait_until(node.server.ping, 15, f"node {node.port} answers")
        existing = self.nodes[0].address
        cluster_command("add-node", primary.address, existing)
        self.nodes.append(primary)
        self.library_copied = bool(primary.client().function_list())  # by add-node itself
        wait_until(lambda: self._agree(len(self.nodes)), 30, "every node knows the new primary")
        node_id = primary.client().cluster("myid").decode()
        self.nodes.append(replica)
        cluster_command(
            "add-node", replica.address, existing, "--cluster-slave", "--cluster-master-id", node_id
        )
        wait_until(lambda: self._agree(len(self.nodes)), 30, "every node knows the new ones")
        cluster_command("rebalance", existing, "--cluster-use-empty-masters")
        return primary

    def _spawn(self, **options: str) -> Node:
        """A cluster-enabled node on a free port pair, started (not yet answering)."""
        host = f"{NODE_NETWORK}{len(self.nodes) + 1}" if self.addresses else ""
        port = free_port_pair(host or "127.0.0.1")
        return start_node(
            self.directory,
            port,
            host,
            cluster_enabled="yes",
            cluster_config_file=f"nodes-{port}.conf",
            cluster_node_timeout=str(NODE_TIMEOUT_MS),
            **options,
        )

    def _agree(self, count: int) -> bool:
        """Whether every node knows ``count`` nodes, has the same view of the slots and says
        the cluster is up: a new primary says it is down for its first 2 s (Redis's
        CLUSTER_WRITABLE_DELAY), and a MIGRATE to it meanwhile fails with CLUSTERDOWN."""
        infos = [n.client().cluster("info") for n in self.running()]
        views = {str(n.client().execute_command("CLUSTER", "SLOTS")) for n in self.running()}
        return len(views) == 1 and all(
            int(i["cluster_known_nodes"]) == count and i["cluster_state"] == "ok" for i in infos
        )

    def replicas_in_sync(self) -> bool:
        """Whether every node but the primaries is a replica in sync."""
        return sum(in_sync(n) for n in self.running()) == len(self.nodes) - self.shards

    @property
    def url(self) -> str:
        return f"redis+cluster://{self.nodes[0].address},{self.nodes[1].address}"

    def healthy(self) -> bool:
        """Every running node says cluster_state:ok and knows three primaries with slots."""
        for node in self.running():
            info = node.client().cluster("info")
            if info["cluster_state"] != "ok":
                return False
        return len(self.primaries()) == self.shards

    @property
    def shards(self) -> int:
        return len(self.nodes) // (1 + self.replicas)

    def running(self) -> list[Node]:
        return [n for n in self.nodes if n.server.running]

    def primaries(self) -> list[Node]:
        """The nodes that are primaries with slots now, as a running node sees them."""
        [anyone] = self.running()[:1]
        shards = anyone.client().execute_command("CLUSTER", "SLOTS")
        addresses = {(shard[2][0].decode(), int(shard[2][1])) for shard in shards}
        return [n for n in self.nodes if (n.host, n.port) in addresses]

    def primary_of(self, key: str) -> Node:
        slot = self.running()[0].client().cluster("keyslot", key)
        for shard in self.running()[0].client().execute_command("CLUSTER", "SLOTS"):
            if shard[0] <= slot <= shard[1]:
                address = (shard[2][0].decode(), int(shard[2][1]))
                return next(n for n in self.nodes if (n.host, n.port) == address)
        raise RuntimeError(f"slot {slot} is not served")

    def replica_of(self, primary: Node) -> Node:
        replicas = self.replicas_of(primary)
        if not replicas:
            raise RuntimeError(f"no replica of {primary.port}")
        return replicas[0]

    def replicas_of(self, primary: Node) -> list[Node]:
        """The running nodes that say they replicate ``primary``."""
        found = []
        for node in self.running():
            info = node.client().info("replication")
            if info.get("role") == "slave" and (
                str(info.get("master_host")),
                int(info.get("master_port", 0)),
            ) == (primary.host, primary.port):
                found.append(node)
        return found

    def stop(self) -> None:
        for node in self.nodes:
            node.close()
            node.server.stop()


@dataclass
class Sentinels:
    """A master, its replica and three sentinels that watch it (quorum 2)."""

    directory: Path
    master: Node | None = None
    replica: Node | None = None
    sentinels: list[Node] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> "Sentinels":
        master_port = free_port_pair()
        self.master = start_node(self.directory, master_port)
        wait_until(self.master.server.ping, 15, "the master answers")
        replica_port = free_port_pair()
        self.replica = start_node(
            self.directory, replica_port, replicaof=f"127.0.0.1 {master_port}"
        )
        replica = self.replica
        wait_until(lambda: in_sync(replica), 15, "the replica is in sync")
        for _ in range(3):
            self._start_sentinel(master_port)
        wait_until(self._sentinels_agree, 30, "the sentinels know the master and replica")
        return self

    def _start_sentinel(self, master_port: int) -> None:
        port = free_port_pair()
        home = self.directory / f"sentinel-{port}"
        home.mkdir(parents=True)
        conf = home / "sentinel.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {home}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {NODE_TIMEOUT_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} 10000\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        popen = subprocess.Popen(
            [find_binary(), str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.processes.append(popen)
        node = Node(port, RedisServer(home))  # only for its client and address
        self.sentinels.append(node)

    def _sentinels_agree(self) -> bool:
        for sentinel in self.sentinels:
            master = sentinel.client().sentinel_master(MASTER_NAME)
            if (
                int(master.get("num-slaves", 0)) < 1
                or int(master.get("num-other-sentinels", 0)) < 2
            ):
                return False
        return True

    @property
    def url(self) -> str:
        hosts = ",".join(s.address for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}"

    def current_master(self) -> Node:
        _, port = self.sentinels[0].client().sentinel_get_master_addr_by_name(MASTER_NAME)
        assert self.master and self.replica
        return self.master if int(port) == self.master.port else self.replica

    def stop(self) -> None:
        for popen in self.processes:
            popen.terminate()
        for popen in self.processes:
            try:
                popen.wait(10)
            except subprocess.TimeoutExpired:
                popen.kill()
        for node in self.sentinels:
            node.close()
        for node in (self.master, self.replica):
            if node:
                node.close()
                node.server.stop()
