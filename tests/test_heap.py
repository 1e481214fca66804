"""echoes.heap: glibc keeps the memory echoes frees, instead of faulting it in again."""

import ctypes
import subprocess
import sys

import pytest

GLIBC = hasattr(ctypes.CDLL(None), "gnu_get_libc_version")

# In a fresh interpreter: the resident set while a 16 MiB block is held, and once it is freed.
PROBE = """
import sys
from echoes import heap
if sys.argv[1] == "kept":
    assert heap.keep_freed_memory()
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
block = b"x" * (16 << 20)
held = rss()
del block
print(held - rss())
"""


def given_back(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    ).stdout
    return int(out)


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_freed_memory_is_kept_for_the_next_request_not_given_back():
    assert given_back("default") >= 15 << 20  # glibc's own thresholds: munmapped at once
    assert given_back("kept") < 1 << 20
