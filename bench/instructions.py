"""Redis's instructions per /exchange, counted: ``python -m bench.instructions REV...``.

CPU time per request (bench/cpu.py) moves by 10% or more with whatever else the machine
runs. This counts instead: each revision's echoes (as bench.revisions runs it) in front of a
redis-server run by valgrind's callgrind, which counts the instructions Redis executes. The
counter is zeroed after a warm-up and read after figure 1's wrk load (fewer connections:
Redis runs some 50 times slower under valgrind), and divided by the requests wrk completed.
The same code gives the same figure to within about 1% (the mix of calls depends a little
on timing: quota reports are sent every few seconds), however busy the machine is.

Needs valgrind (``apt-get install valgrind``) besides wrk and redis-server, and root:
callgrind_control, which zeroes and reads the counter, hangs for another user (and the
counted redis-server exits), though it reaches a plain program of the same user.
"""

import argparse
import contextlib
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import redis

from echoes.embedded import RedisServer

from .figures import wrk
from .revisions import checked_out, echoes_at, parse_variants
from .services import SHIPPED_LOG_LEVEL, free_port, raise_file_limit, require

CONNECTIONS = 8
CONTROL_SECONDS = 30


class CountedRedis(RedisServer):
    """A redis-server run by callgrind, its counts dumped into its data directory."""

    def command(self) -> list[str]:
        out = self.data_dir / "callgrind.out.%p"
        return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *super().command()]

    def dumps(self) -> list[Path]:
        return sorted(self.data_dir.glob("callgrind.out.*"), key=lambda p: p.stat().st_mtime)

    def zero(self) -> None:
        """Start counting afresh (callgrind acts on it when Redis next runs: within 100 ms,
        its own timer)."""
        self._control("-z")
        time.sleep(0.5)

    def counted(self) -> int:
        """Instructions since zero()."""
        before = len(self.dumps())
        self._control("-d")
        deadline = time.monotonic() + 30
        while len(self.dumps()) <= before:
            if time.monotonic() > deadline:
                raise RuntimeError("callgrind wrote no dump")
            time.sleep(0.1)
        time.sleep(0.5)  # written whole
        for line in self.dumps()[-1].read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
        raise RuntimeError("a callgrind dump without totals")

    def _control(self, flag: str) -> None:
        assert self.process is not None
        command = ["callgrind_control", flag, str(self.process.pid)]
        try:
            subprocess.run(command, check=True, capture_output=True, timeout=CONTROL_SECONDS)
        except (subprocess.SubprocessError, OSError) as e:
            raise SystemExit(
                "python -m bench.instructions: callgrind_control could not reach redis-server"
                f" under callgrind ({type(e).__name__}); run it as root (as another user it"
                " hangs, and redis-server exits, on this machine)"
            ) from None


def commands(client: redis.Redis) -> tuple[int, int]:
    """Script calls and commands in all Redis ran so far (INFO commandstats)."""
    stats = client.info("commandstats")
    calls = sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("fcall", "evalsha"))
    return calls, sum(v["calls"] for k, v in stats.items() if k.startswith("cmdstat_"))


def measure(
    tree: Path, workdir: Path, seconds: int, log_level: str, extra: Sequence[str]
) -> dict[str, float]:
    """One run of ``tree``'s echoes on a counted Redis of its own."""
    server = CountedRedis(workdir / "redis", port=str(free_port()), appendonly="no")
    server.start(timeout=60)
    url = f"redis://127.0.0.1:{server.options['port']}/0"
    client = redis.Redis.from_url(url)
    try:
        service = echoes_at(tree, url, workdir, log_level, extra)
        try:
            wrk(service.url, 2, CONNECTIONS)
            server.zero()
            calls, done = commands(client)
            row = wrk(service.url, seconds, CONNECTIONS)
            calls, done = (a - b for a, b in zip(commands(client), (calls, done), strict=True))
            instructions = server.counted()
        finally:
            service.stop()
    finally:
        client.close()
        server.stop()
    n = row["requests"]
    return {
        "requests": n,
        "instructions": instructions / n,
        "scripts": calls / n,
        "commands": done / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("revisions", nargs="*")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--log-level", default=SHIPPED_LOG_LEVEL)
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL=OPTIONS",
        help="this tree again, with these echoes options; repeat for more",
    )
    args = parser.parse_args()
    require("python -m bench.instructions", "wrk", "redis-server", "valgrind")
    raise_file_limit()
    print(f"command: python -m bench.instructions {shlex.join(sys.argv[1:])}", flush=True)
    rows = {}
    with (
        tempfile.TemporaryDirectory(prefix="echoes-instructions-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        workdir = Path(tmp)
        trees = checked_out(stack, workdir, args.revisions)
        runs: dict[str, tuple[Path, Sequence[str]]] = {name: (t, ()) for name, t in trees.items()}
        for name, extra in parse_variants(parser, args.variant).items():
            runs[name] = (trees["this tree"], extra)
        for i, (name, (tree, extra)) in enumerate(runs.items()):
            run_dir = workdir / f"run-{i}"
            run_dir.mkdir()
            rows[name] = measure(tree, run_dir, args.seconds, args.log_level, extra)
    first = next(iter(rows.values()))["instructions"]
    print(
        "\n| revision | requests | Redis instructions/req | vs the first | script calls/req"
        " | Redis commands/req |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        print(
            f"| {name} | {r['requests']:.0f} | {r['instructions']:,.0f}"
            f" | {r['instructions'] / first:.2f} | {r['scripts']:.2f} | {r['commands']:.1f} |"
        )


if __name__ == "__main__":
    main()
