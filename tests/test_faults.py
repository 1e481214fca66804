"""Faults under load, with every record accounted for (bench/faults.py, short form).

`python -m bench.faults` runs the same scenarios and prints the table in RELIABILITY.md;
`--soak` runs them ten times longer.
"""

import pytest

from bench import faults
from bench.services import raise_file_limit

SECONDS = 3.0


@pytest.fixture(autouse=True)
def _files():
    raise_file_limit()


def assert_accounted(row):
    assert row["records_sent"] > 100, row  # the load really ran
    assert row["lost"] == 0 and row["duplicated"] == 0, row
    assert set(row["statuses"]) <= {
        "200",
        "503",
        "ConnectionRefusedError",
        "ConnectionResetError",
        "IncompleteReadError",
    }, row


def test_redis_restarted_mid_load(tmp_path):
    row = faults.redis_restart(tmp_path, SECONDS)
    assert_accounted(row)
    assert row["echoes_alive"] and row["statuses"].get("503", 0) > 0


def test_an_echoes_process_killed_mid_load(tmp_path):
    assert_accounted(faults.worker_killed(tmp_path, SECONDS))


def test_a_stalled_redis_answers_503_within_the_timeout(tmp_path):
    row = faults.redis_paused(tmp_path, SECONDS)
    assert_accounted(row)
    assert row["statuses"].get("503", 0) > 0
    assert row["slowest_ms"] < 2000  # --redis-timeout=0.5 and waits of 0.5 s, never 2 s


def test_the_wake_up_listener_killed_repeatedly(tmp_path):
    row = faults.listener_killed(tmp_path, SECONDS)
    assert_accounted(row)
    assert set(row["statuses"]) == {"200"}
    # The safety sweep runs every 60 s here: anything near that would be a missed wake-up.
    assert row["slowest_delivery_ms"] < 10_000, row
