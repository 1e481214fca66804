"""glibc's malloc, told to keep the memory echoes frees for its next requests.

A receive of big records makes buffers of a megabyte or more (the bodies read from Redis,
the batch, the response with its headers); Python takes each from malloc. glibc serves a
block past its mmap threshold with an mmap of its own, and gives the free top of its heap
back to the kernel past its trim threshold. Both thresholds follow what was freed last, but
the memory is given back all the same, and the next request's megabyte is faulted in again
page by page: in BENCHMARKS.md's bystander figure that was 3 to 7 ms of the event loop's CPU
per 1 MB receive, every other request waiting behind it. Fixed thresholds keep freed memory
for reuse: a process holds on to what its busiest moment used (which the bytes-in-flight
budget bounds, --max-bytes-in-flight), not more, and gives it back once a slow reader's
answer is dropped. Nothing changes where the C library is not glibc.
"""

import ctypes
import logging

log = logging.getLogger("echoes")

# mallopt's parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap: the most glibc allows (32 MiB on 64 bits), more
# than any one buffer of a request at the default limits (--max-batch-bytes is 8 MiB).
MMAP_THRESHOLD = 32 << 20
# Free memory at the top of the heap is given back past this.
TRIM_THRESHOLD = 64 << 20


_kept = False


def keep_freed_memory() -> bool:
    """Set glibc's thresholds (at start, before any worker is forked: they inherit them);
    False where the C library is not glibc or refused them."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (glibc's own: not musl's mallopt, a no-op)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    global _kept
    kept = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    _kept = kept = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and kept
    log.debug("glibc malloc keeps freed memory for reuse: %s", kept)
    return kept


def give_back() -> None:
    """Give the kernel what the heap holds free (glibc's malloc_trim: a few milliseconds per
    hundred megabytes), where keep_freed_memory kept it: after a slow reader is cut off,
    whose answer was the most memory a request holds (http/inbox.py)."""
    if _kept:
        ctypes.CDLL(None).malloc_trim(0)
