"""Figures 3 and 4 alone, echoes' part, for revisions beside this tree:
``python -m bench.waiters [REV...] [--counts N ...] [--rounds R]``.

The RSS of one echoes process holding long polls, and their wake-up latency, as
``python -m bench`` measures them (bench/figures.py: 100, 1,000 then 10,000 waiters on the
same process, 300 sends through another), without the other figures. Each revision is
checked out into a temporary git worktree and run from there (bench/revisions.py), on a
Redis of its own; the revisions and this tree take turns, ``--rounds`` times. The RSS is
shown when the last waiter was counted and once it settled (figures.settled_rss), the figure
``python -m bench`` reports.
"""

import argparse
import asyncio
import contextlib
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

from . import figures
from .__main__ import FULL, running
from .revisions import checked_out, echoes_at
from .services import SHIPPED_LOG_LEVEL, raise_file_limit, require, start_redis


def measure(tree: Path, workdir: Path, counts: list[int], samples: int) -> list[dict[str, Any]]:
    """Figures 3 and 4 of echoes at ``tree``: a waiter and a sender process, one Redis."""
    redis, url = start_redis(workdir)
    try:
        with (
            running(echoes_at(tree, url, workdir, SHIPPED_LOG_LEVEL)) as waiter,
            running(echoes_at(tree, url, workdir, SHIPPED_LOG_LEVEL)) as sender,
        ):
            return [
                asyncio.run(
                    figures.wakeups(
                        "echoes", waiter, sender, count, min(count, samples), f"w{count}x"
                    )
                )
                for count in counts
            ]
    finally:
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.waiters", description=__doc__)
    parser.add_argument("revisions", nargs="*")
    parser.add_argument("--counts", type=int, nargs="+", default=FULL["waiters"])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    require("python -m bench.waiters", "redis-server")
    raise_file_limit()
    print(f"command: python -m bench.waiters {shlex.join(sys.argv[1:])}".strip(), flush=True)
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="echoes-waiters-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        workdir = Path(tmp)
        trees = checked_out(stack, workdir, args.revisions)
        for n in range(args.rounds):
            for name, tree in trees.items():
                where = workdir / f"run-{n}-{len(rows)}"
                where.mkdir()
                for row in measure(tree, where, args.counts, FULL["samples"]):
                    rows.append({"revision": name, "round": n + 1, **row})
                    print(rows[-1], flush=True)
    print(
        "\n| revision | round | waiters | RSS MB, settled | RSS MB, last one counted"
        " | p50 ms | p99 ms |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['revision']} | {r['round']} | {r['waiters']:,} | {r['rss_mb']:.1f}"
            f" | {r['rss_registered_mb']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |"
        )


if __name__ == "__main__":
    main()
