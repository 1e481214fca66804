"""The benchmark keeps working: `python -m bench --quick` runs end to end (no timing asserted)."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import needs

ROOT = Path(__file__).resolve().parent.parent


@needs("wrk")
def test_quick_benchmark_reports_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "command: python -m bench --quick" in result.stdout
    r = json.loads(out.read_text())
    for name in ("ceiling", "echoes", "echoes_2_processes"):
        assert r["throughput"][name]["rps"] > 0
    assert [row["stored"] for row in r["receive_cost"]] == r["sizes"]["volumes"]
    assert all(row["original_ms"] > 0 and row["echoes_store_ms"] > 0 for row in r["receive_cost"])
    assert [row["waiters"] for row in r["wakeup"]["echoes"]] == r["sizes"]["waiters"]
    assert all(row["rss_mb"] > 0 for row in r["wakeup"]["echoes"])
    assert r["memory"]["bytes_per_record"] > 100
    assert "| echoes |" in result.stdout
