"""The benchmark keeps working: `python -m bench --quick` runs end to end (no timing asserted)."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import needs

ROOT = Path(__file__).resolve().parent.parent


def quick_run(module: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], Any]:
    """``python -m MODULE --quick``, which must succeed; its output and its JSON results."""
    out = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, "-m", module, "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result, json.loads(out.read_text())


def bench_output(module: str, *args: str, timeout: float) -> str:
    """What ``python -m MODULE ARGS`` prints; it must succeed."""
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return result.stdout


@needs("wrk")
def test_quick_benchmark_reports_every_figure(tmp_path):
    result, r = quick_run("bench", tmp_path)
    assert "command: python -m bench --quick" in result.stdout
    for name in ("ceiling", "echoes", "echoes_warning", "echoes_2_processes"):
        row = r["throughput"][name]
        assert row["rps"] > 0 and row["server_us"] > 0 and row["redis_us"] > 0
        assert row["scripts"] >= 1  # the ceiling's one script, echoes' puts, take and acks
    assert [row["stored"] for row in r["receive_cost"]] == r["sizes"]["volumes"]
    assert all(row["original_ms"] > 0 and row["echoes_store_ms"] > 0 for row in r["receive_cost"])
    assert [row["waiters"] for row in r["wakeup"]["echoes"]] == r["sizes"]["waiters"]
    assert all(row["rss_mb"] > 0 for row in r["wakeup"]["echoes"])
    assert r["memory"]["bytes_per_record"] > 100
    assert "| echoes |" in result.stdout and "| echoes_warning |" in result.stdout
    assert "the access log's cost" in result.stdout
    assert (
        "| access log's cost: 1 - info's rate / warning's | <= 0.05 | issue 24 |" in result.stdout
    )
    assert "Projection, not a measurement" in result.stdout and "| 16 |" in result.stdout
    assert "| figure | target | set by | measured | holds? |" in result.stdout


def test_the_json_path_benchmark_times_every_step():
    out = bench_output("bench.jsonpath", "--calls=10", timeout=60)
    assert "command: python -m bench.jsonpath --calls=10" in out
    assert "| parse: echoes (stdlib json with its hooks) |" in out
    assert "| parse + check + names: validation.message |" in out


def test_the_waiters_benchmark_reads_the_rss_of_each_count():
    out = bench_output("bench.waiters", "--counts", "5", "20", "--rounds", "1", timeout=120)
    assert "command: python -m bench.waiters --counts 5 20 --rounds 1" in out
    assert "| this tree | 1 | 5 |" in out and "| this tree | 1 | 20 |" in out


@needs("wrk")
@needs("valgrind")
@pytest.mark.skipif(
    os.geteuid() != 0 and not os.environ.get("CI"),
    reason="bench.instructions needs root (callgrind_control hangs for another user; CI runs"
    " as root)",
)
def test_the_instructions_benchmark_counts_redis_work_per_request():
    out = bench_output("bench.instructions", "--seconds", "1", timeout=240)
    assert "command: python -m bench.instructions --seconds 1" in out
    [row] = [line for line in out.splitlines() if line.startswith("| this tree |")]
    _, _, requests, instructions, ratio, scripts, commands, _ = row.split("|")
    assert int(requests) > 0 and int(instructions.replace(",", "")) > 10_000
    assert ratio.strip() == "1.00" and float(scripts) >= 1 and float(commands) > float(scripts)


@pytest.mark.parametrize("module", ["bench", "bench.cluster"])
def test_a_benchmark_without_wrk_says_what_to_install_in_one_line(module, tmp_path):
    # It ended in a FileNotFoundError traceback once its Redis was running.
    result = subprocess.run(
        [sys.executable, "-m", module, "--quick"],
        cwd=ROOT,
        env=dict(os.environ, PATH=str(tmp_path)),  # nothing on it: no wrk
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "apt-get install wrk" in result.stderr


def test_the_projection_is_bound_by_cores_then_by_redis():
    from bench import projection

    small, large = projection.project(900, 200, 2), projection.project(900, 200, 16)
    assert small["bound"] == "all cores" and small["rps"] == 2e6 / 1100
    assert large["bound"] == "Redis's one thread" and large["rps"] == 1e6 / 200
    assert projection.redis_bound_cores(900, 200) == 5.5


@needs("wrk")
@needs("redis-cli")
def test_quick_cluster_benchmark_reports_every_row(tmp_path):
    result, r = quick_run("bench.cluster", tmp_path)
    assert len(r["primaries"]) == 3
    for name in ("one Redis", "Cluster, 3 primaries", "Cluster, --redis-wait-replicas=1"):
        row = r["throughput"][name]
        assert row["rps"] > 0 and row["server_us"] > 0 and row["scripts"] >= 1, name
        assert f"| {name} |" in result.stdout
    clustered = r["throughput"]["Cluster, 3 primaries"]["redis_us_by_server"]
    assert sum(us > 0 for url, us in clustered.items() if url in r["primaries"]) == 3
    assert "Projection, not a measurement" in result.stdout and "| 24 |" in result.stdout


def test_quick_store_benchmark_bounds_what_one_caller_holds(tmp_path):
    # Issue 20: a bystander beside a caller that receives from a hoard of large records and
    # sends to it full; no timing is asserted, only answers and bounds.
    result, r = quick_run("bench.store", tmp_path)
    assert "$ python -m bench.store --quick" in result.stdout
    for row in r["call_costs"]:
        for design in ("second", "first"):
            assert all(us > 0 for us in row[design].values()), row
    assert r["memory"]["second_bytes_per_record_inboxes_of_1"] > r["memory"]["record_json_bytes"]
    assert r["memory"]["bytes_per_tombstone"] > 0
    bystander = r["bystander"]
    assert bystander["beside_attack"]["n"] > 0  # every one answered 200 (asserted in the bench)
    statuses = {status for counts in bystander["attack_statuses"] for status in counts}
    assert not any(status.split()[1].startswith("5") for status in statuses), statuses
    assert "send 429" in statuses  # the hoard is full: its sends are refused
    assert bystander["hoard_bytes"] <= bystander["max_inbox_bytes"]


def test_the_abuse_benchmark_prints_its_table():
    # A short large-sends attack, limits on and off: the table comes out, the bystander passes.
    result = subprocess.run(
        [sys.executable, "-m", "bench.abuse", "--seconds", "3", "large"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| large |")]
    assert len(rows) == 2 and all("| 0 of " in row for row in rows)
