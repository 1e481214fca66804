"""Links on loopback cut with iptables, in a chain of our own that is always removed.

The chain ECHOES-PARTITION is jumped to from INPUT (``-i lo``) and OUTPUT (``-o lo``); each cut
is a pair of DROP rules in it (one per direction) between two loopback addresses, so that
dropped packets look like a network that went silent: no RST, TCP retransmits until the heal
(as in a real partition, and as Jepsen cuts links). Only 127.0.0.0/8 addresses are accepted:
nothing off this machine is ever touched. ``heal()`` flushes the chain; ``remove()`` (run by
``with``, and by atexit should the process end some other way) deletes the jumps and the
chain. A chain left by a run that was killed is removed when the next one starts. One run at
a time: two would share the chain.
"""

import atexit
import ipaddress
import itertools
import os
import shutil
import subprocess
from collections.abc import Iterable

CHAIN = "ECHOES-PARTITION"
JUMPS = (("INPUT", "-i"), ("OUTPUT", "-o"))
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


def unusable() -> str | None:
    """Why this machine cannot cut links (no iptables, not root), or None if it can."""
    if shutil.which("iptables") is None:
        return "iptables is not installed (.ci/run installs it)"
    if os.geteuid() != 0:
        return "cutting links with iptables needs root"
    result = _iptables("-S", "OUTPUT", check=False)
    if result.returncode != 0:
        return f"iptables does not work here: {result.stderr.strip()}"
    return None


def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # -w: wait for the xtables lock rather than fail when another iptables runs.
    return subprocess.run(["iptables", "-w", *args], capture_output=True, text=True, check=check)


def loopback(address: str) -> str:
    """``address`` itself if it is a loopback address; ValueError otherwise."""
    if ipaddress.ip_address(address) not in LOOPBACK:
        raise ValueError(f"{address} is not a loopback address: refusing to cut it")
    return address


class Firewall:
    """The chain of cuts: ``with Firewall() as fw: fw.cut(a, b) ... fw.heal()``."""

    def __init__(self) -> None:
        self.cuts: set[tuple[str, str]] = set()
        self.installed = False

    def __enter__(self) -> "Firewall":
        self.install()
        return self

    def __exit__(self, *_: object) -> None:
        self.remove()

    def install(self) -> None:
        """Make the empty chain and jump to it from INPUT and OUTPUT on lo."""
        self.remove()  # what a killed run left
        atexit.register(self.remove)
        _iptables("-N", CHAIN)
        for builtin, flag in JUMPS:
            _iptables("-I", builtin, flag, "lo", "-j", CHAIN)
        self.installed = True

    def cut(self, a: str, b: str) -> None:
        """Drop every packet between ``a`` and ``b``, both ways."""
        for source, destination in ((a, b), (b, a)):
            rule = (loopback(source), loopback(destination))
            if rule not in self.cuts:
                _iptables("-A", CHAIN, "-s", rule[0], "-d", rule[1], "-j", "DROP")
                self.cuts.add(rule)

    def partition(self, side: Iterable[str], other: Iterable[str]) -> int:
        """Cut every link between an address of ``side`` and one of ``other``; how many."""
        pairs = list(itertools.product(set(side), set(other)))
        for a, b in pairs:
            self.cut(a, b)
        return len(pairs)

    def heal(self) -> None:
        """Every link back."""
        _iptables("-F", CHAIN)
        self.cuts.clear()

    def rules(self) -> list[str]:
        """The chain's rules as iptables -S prints them ([] when there is no chain)."""
        result = _iptables("-S", CHAIN, check=False)
        return result.stdout.splitlines()[1:] if result.returncode == 0 else []

    def remove(self) -> None:
        """Delete the jumps and the chain, whatever is left of them (never fails)."""
        for builtin, flag in JUMPS:
            for _ in range(100):  # one jump per install; a few, if runs were killed
                if _iptables("-D", builtin, flag, "lo", "-j", CHAIN, check=False).returncode:
                    break
        _iptables("-F", CHAIN, check=False)
        _iptables("-X", CHAIN, check=False)
        self.cuts.clear()
        self.installed = False


def present() -> bool:
    """Whether the chain exists (a test checks it is gone after a run)."""
    return _iptables("-S", CHAIN, check=False).returncode == 0
