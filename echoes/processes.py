"""--processes=N: worker processes sharing the listening sockets, supervised by the parent.

Each worker builds its own Redis clients and wake-up listener after the fork. The parent
restarts a worker that dies abnormally, forwards SIGTERM, SIGINT and SIGHUP to every worker, and
exits 0 once they have all exited. (Tornado's fork_processes restarts workers too, but
neither forwards signals nor says which pids it started.)
"""

import contextlib
import ctypes
import logging
import os
import signal
import time
from collections.abc import Callable

log = logging.getLogger("echoes.processes")

RESTART_DELAY = 0.5
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Linux: have the kernel send this process SIGTERM when its parent dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def supervise(count: int, work: Callable[[], int], on_exit: Callable[[int], None]) -> int:
    """Run ``work`` in ``count`` forked workers until a signal stops them; the exit status.

    ``on_exit(pid)`` is called in the parent for every child it reaps: the workers, and any
    other child of the parent (the embedded redis-server), which it then no longer waits for.
    """
    workers: dict[int, int] = {}
    stopping = False

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the worker handles it
            die_with_parent()  # a worker whose supervisor was killed does not linger
            status = 1
            try:
                status = work()
            finally:
                os._exit(status)
        workers[pid] = index

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def forward(signum: int, frame: object) -> None:
        for pid in list(workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, forward)  # reload: each worker reads the configuration
    for index in range(count):
        spawn(index)
    log.info("started %d worker processes: %s", count, " ".join(map(str, workers)))
    while workers:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        on_exit(pid)
        if pid not in workers:
            continue
        index = workers.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        if stopping or code == 0:
            continue
        log.error("worker %d (pid %d) exited with %d; restarting it", index, pid, code)
        time.sleep(RESTART_DELAY)
        if not stopping:
            spawn(index)
    return 0
