"""Network partitions of a Redis Cluster under load, every record accounted for
(bench/partition.py, short form: two of its scenarios, each cut held 6 s).

`python -m bench.partition` runs every scenario with --redis-wait-replicas=1 and =2 and
prints the table in RELIABILITY.md. Here the wait equals the replicas of each primary (2),
the setting the README calls safe: nothing acknowledged lost, nothing delivered more often
than sent, nothing stranded after the heal. Needs root and iptables (CI has both).
"""

import os

import pytest
from conftest import needs

from bench import firewall, partition
from bench.services import raise_file_limit

HOLD = 6.0
ANSWERS = {"200", "503", "TimeoutError", "ConnectionResetError", "IncompleteReadError"}
not_root = os.geteuid() != 0 and not os.environ.get("CI")


def cuts(test):
    """The marks of a test that cuts links: it skips where it cannot, except in CI."""
    for mark in (
        needs("redis-cli"),  # it makes the Cluster
        needs("iptables"),  # it cuts the links
        pytest.mark.skipif(not_root, reason="cutting links with iptables needs root (CI has it)"),
        pytest.mark.timeout(420),
    ):
        test = mark(test)
    return test


@pytest.fixture(autouse=True)
def _files():
    raise_file_limit()


def assert_safe(row):
    assert row["sent"] > 100, row  # the load really ran
    assert set(row["answers"]) <= ANSWERS, row
    assert row["lost"] == 0, row
    assert row["more_than_sent"] == 0, row
    assert row["stranded"] == 0 and not row["stranded_inboxes"], row
    assert row["replicas_after"] == [2, 2, 2], row  # no replica migrated away for good
    assert not firewall.present()  # the chain went with the run


@cuts
def test_a_primary_and_a_replica_cut_off_with_echoes_on_both_sides_lose_nothing(tmp_path):
    # The split brain: the cut-off primary keeps one replica, so only WAIT 2 refuses its
    # writes; the majority promotes the other replica.
    scenario = partition.BY_NAME["minority-echoes-both"]
    row = partition.run(scenario, 2, tmp_path, HOLD)
    print(row)
    assert_safe(row)
    assert row["promoted_s"] is not None, row  # the majority did fail over


@cuts
def test_echoes_cut_from_a_primary_loses_nothing_to_late_takes(tmp_path):
    # No failover: what echoes sent before the cut reaches the primary after the heal,
    # past its deadline, and must change nothing (the stale take of issue 25).
    row = partition.run(partition.BY_NAME["echoes-from-primary"], 2, tmp_path, HOLD)
    print(row)
    assert_safe(row)


def test_only_loopback_addresses_are_ever_cut():
    assert firewall.loopback("127.0.42.7") == "127.0.42.7"
    for address in ("10.0.0.1", "192.168.1.1", "172.16.0.1", "8.8.8.8"):
        with pytest.raises(ValueError):
            firewall.loopback(address)


def test_the_harness_runs_the_shipped_cluster_settings():
    settings = partition.cluster_settings()
    assert settings["cluster_migration_barrier"] == "2"
    assert settings["cluster_require_full_coverage"] == "no"
