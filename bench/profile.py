"""Where echoes spends its CPU under the throughput load: ``python -m bench.profile``.

Samples one echoes process with py-spy (``pip install py-spy``) while wrk drives POST
/exchange as in figure 1, and prints the share of samples in each part of the request path.
Shares overlap where one part runs inside another (the store runs inside the handler).
"""

import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .figures import wrk
from .services import raise_file_limit, require, start_echoes, start_redis

GROUPS = {
    "Tornado: read and parse the request, write the response": [
        "HTTP1ServerConnection._server_request_loop",
        "RequestHandler.finish",
    ],
    "echoes handler, all of it": ["InboxHandler.post"],
    "  store: the send+take script calls": ["Store.exchange"],
    "  store: the acks script calls": ["Store._queue_acks"],
    "  validation": ["(echoes/http/validation.py"],
    "pipeline: batches written to Redis, replies read (its own tasks)": ["Pipeline._send"],
    "  redis-py: reading replies": ["AbstractConnection.read_response"],
    "wake-up listener (nothing waits under this load)": ["Listener.run"],
    "metrics and access log": ["log_request"],
}


def main(seconds: int = 8) -> None:
    require("python -m bench.profile", "wrk", "redis-server")
    spy = shutil.which("py-spy", path=Path(sys.executable).parent) or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("python -m bench.profile needs py-spy; not found: pip install py-spy")
    raise_file_limit()
    with tempfile.TemporaryDirectory(prefix="echoes-profile-") as tmp:
        workdir = Path(tmp)
        redis, url = start_redis(workdir)
        echoes = start_echoes(url, workdir)
        out = workdir / "profile.txt"
        command = [spy, "record", "-r", "400", "-f", "raw", "-o", str(out), "-d", str(seconds)]
        try:
            spy_run = subprocess.Popen(
                [*command, "-p", str(echoes.popen.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            result = wrk(echoes.url, seconds)
            spy_run.wait(seconds + 30)
        finally:
            echoes.stop()
            redis.stop()
        shares, total = collections.Counter(), 0
        for line in out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            total += int(count)
            for group, needles in GROUPS.items():
                if any(n in stack for n in needles):
                    shares[group] += int(count)
    print(f"command: python -m bench.profile   ({result['rps']:.0f} req/s while sampled)")
    for group in GROUPS:
        print(f"{shares[group] / total * 100:5.1f}%  {group}")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
