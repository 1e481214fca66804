"""Failovers of a Redis Cluster primary and of a Sentinel-managed master under load, with
every record accounted for (bench/failover.py, short form).

`python -m bench.failover` runs the same scenarios, longer, and prints the table in
RELIABILITY.md. With --redis-wait-replicas=1 nothing acknowledged is lost or repeated;
without it the loss is what asynchronous replication allows, and is only reported here.
"""

import pytest
from conftest import needs, needs_redis_7

from bench import failover
from bench.services import raise_file_limit

pytestmark = needs("redis-cli")  # it makes the Cluster (Debian's redis-tools; CI installs it)
SECONDS = 8.0  # of load, the failover in the middle; the load goes on 4 s after it is over
# Redis 6.2 reads `--replicaof "HOST PORT"`, as bench.topologies starts a replica, as one word.
needs_replicaof = needs_redis_7("a replica started with --replicaof 'HOST PORT'")
ANSWERS = {"200", "503", "ConnectionResetError", "IncompleteReadError", "TimeoutError"}


@pytest.fixture(autouse=True)
def _files():
    raise_file_limit()


def assert_ran(row):
    assert row["records_sent"] > 100, row  # the load really ran
    assert set(row["statuses"]) <= ANSWERS, row
    assert row["woken_after"] > 0, row  # long polls were woken again after the failover
    assert all(seen >= 1 for seen in row["failovers_seen"]), row  # /metrics counted it


def assert_nothing_lost(row):
    assert_ran(row)
    assert row["lost"] == 0 and row["duplicated"] == 0, row


@pytest.mark.timeout(240)
@pytest.mark.parametrize("wait_replicas", [1, 0])
def test_a_cluster_primary_killed_mid_load(tmp_path, wait_replicas):
    row = failover.cluster_primary_killed(tmp_path, SECONDS, wait_replicas)
    print(row)  # without WAIT, what was lost is this figure (RELIABILITY.md)
    (assert_nothing_lost if wait_replicas else assert_ran)(row)
    assert row["readers_on_it"] > 0


@pytest.mark.timeout(240)
def test_a_cluster_manual_failover_under_load_loses_nothing(tmp_path):
    # CLUSTER FAILOVER pauses the old primary's clients until its replica has caught up.
    assert_nothing_lost(failover.cluster_manual_failover(tmp_path, SECONDS, 0))


@needs_replicaof
@pytest.mark.timeout(240)
@pytest.mark.parametrize("wait_replicas", [1, 0])
def test_a_sentinel_master_killed_mid_load(tmp_path, wait_replicas):
    row = failover.sentinel_master_killed(tmp_path, SECONDS, wait_replicas)
    print(row)
    (assert_nothing_lost if wait_replicas else assert_ran)(row)


@needs_replicaof
@pytest.mark.timeout(240)
def test_a_sentinel_manual_failover_under_load_loses_nothing_with_wait(tmp_path):
    # SENTINEL FAILOVER does not pause the old master: without WAIT its last writes go.
    assert_nothing_lost(failover.sentinel_manual_failover(tmp_path, SECONDS, 1))
