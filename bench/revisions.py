"""Earlier revisions beside this tree, under figure 1's load: ``python -m bench.revisions REV...``.

Each revision is checked out into a temporary git worktree and run from there (its own
``python -m echoes``, with this tree's installed packages, on a Redis of its own started
alike: the revisions' key layouts and Lua libraries differ); the ceiling,
each revision and this tree take turns, three rounds, and the table has the medians of their
/exchange rate and of the CPU that echoes and Redis spent per request (bench/cpu.py). A
revision's figures are its code's, not its bench's: the same load and meter measure all.
"""

import argparse
import contextlib
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from . import figures
from .services import (
    HERE,
    SHIPPED_LOG_LEVEL,
    Service,
    raise_file_limit,
    require,
    start_ceiling,
    start_python,
    start_redis,
    wait_ready,
)

ROOT = HERE.parent


@contextlib.contextmanager
def worktree(revision: str, into: Path) -> Iterator[Path]:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "-f", str(into), revision],
        check=True,
        capture_output=True,
    )
    try:
        yield into
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(into)],
            check=False,
            capture_output=True,
        )


def checked_out(stack: contextlib.ExitStack, into: Path, revisions: list[str]) -> dict[str, Path]:
    """Each of ``revisions`` in a worktree under ``into`` (removed when ``stack`` closes), by
    its short name, then this tree: the trees a comparison runs."""
    trees = {
        short(rev): stack.enter_context(worktree(rev, into / f"tree-{short(rev)}"))
        for rev in revisions
    }
    trees["this tree"] = ROOT
    return trees


def short(revision: str) -> str:
    """The abbreviated commit ``revision`` names (HEAD, a branch, a tag)."""
    return subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", revision],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def parse_variants(parser: argparse.ArgumentParser, given: list[str]) -> dict[str, list[str]]:
    """``--variant LABEL=OPTIONS`` as {"this tree, LABEL": [option, ...]}."""
    variants = {}
    for variant in given:
        label, equals, options = variant.partition("=")
        if not equals or not label:
            parser.error(f"--variant takes LABEL=OPTIONS, not {variant!r}")
        variants[f"this tree, {label}"] = shlex.split(options)
    return variants


def echoes_at(
    tree: Path, redis_url: str, workdir: Path, log_level: str, extra: Sequence[str] = ()
) -> Service:
    """``python -m echoes`` of ``tree`` (its own package first on the path), with ``extra``
    options."""
    args = [
        "-c",
        f"import sys; sys.path.insert(0, {str(tree)!r}); import runpy;"
        " runpy.run_module('echoes', run_name='__main__')",
        f"--redis-url={redis_url}",
        f"--log-level={log_level}",
        *extra,
    ]
    service = start_python(f"echoes-{tree.name}", args, workdir, "/health")
    wait_ready(service)
    return service


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.revisions", description=__doc__)
    parser.add_argument("revisions", nargs="+")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument(
        "--log-level",
        default=SHIPPED_LOG_LEVEL,
        help="echoes' --log-level (default: info, as conf/echoes.conf ships: an access line"
        " per request)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL=OPTIONS",
        help="this tree again, with these echoes options (e.g. 'no window=--dedup-window=0');"
        " repeat for more",
    )
    args = parser.parse_args()
    variants = parse_variants(parser, args.variant)
    require("python -m bench.revisions", "wrk", "redis-server")
    raise_file_limit()
    print(f"command: python -m bench.revisions {shlex.join(sys.argv[1:])}", flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="echoes-revisions-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        workdir = Path(tmp)
        trees = checked_out(stack, workdir, args.revisions)
        options: dict[str, Sequence[str]] = {name: () for name in trees}
        for name, extra in variants.items():
            trees[name], options[name] = ROOT, extra
        urls = {}
        for name in ["ceiling", *trees]:
            redis, urls[name] = start_redis(workdir / f"redis-{len(urls)}")
            stack.callback(redis.stop)
        starters: dict[str, Callable[[], Service]] = {
            "ceiling": lambda: start_ceiling(urls["ceiling"], workdir)
        }
        for name, tree in trees.items():
            starters[name] = lambda name=name, tree=tree: echoes_at(
                tree, urls[name], workdir, args.log_level, options[name]
            )
        rows = figures.throughput(starters, 3, args.seconds, {n: [u] for n, u in urls.items()})
    ceiling = rows["ceiling"]
    print(
        "\n| revision | req/s | vs ceiling | echoes CPU us/req | vs ceiling | Redis CPU us/req"
        " | vs ceiling | Redis commands/req |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        print(
            f"| {name} | {r['rps']:.0f} | {r['rps'] / ceiling['rps']:.2f} | {r['server_us']:.0f}"
            f" | {r['server_us'] / ceiling['server_us']:.2f} | {r['redis_us']:.0f}"
            f" | {r['redis_us'] / ceiling['redis_us']:.2f} | {r['redis_commands']:.1f} |"
        )


if __name__ == "__main__":
    main()
