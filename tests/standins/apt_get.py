#!/usr/bin/env python3
"""A stand-in for apt-get (tests/test_deploy.py): ``apt-get install [-y] PACKAGE...``.

The test's namespace has no network, and CI installs the packages beforehand (.ci/run). So
this checks that each package named is installed, and fails naming those that are not: a
README that names a package CI does not install fails here instead of passing untested.
Then it starts the service each package is named after, if there is one (redis-server,
nginx), as a real install does: Debian's packages start their services once installed.
"""

import subprocess
import sys
from pathlib import Path


def installed(package: str) -> bool:
    status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True)
    return status.returncode == 0 and status.stdout == b"install ok installed"


def main(args: list[str]) -> int:
    words = [a for a in args if not a.startswith("-")]
    if not words or words[0] != "install" or set(args) - set(words) - {"-y", "-q", "-qq"}:
        print(f"apt-get stand-in: only install [-y] is emulated, not {args}", file=sys.stderr)
        return 100
    packages = words[1:]
    missing = [p for p in packages if not installed(p)]
    if missing:
        print(f"apt-get stand-in: not installed here: {' '.join(missing)}", file=sys.stderr)
        print("(add them to .ci/run's list and README.md's Development)", file=sys.stderr)
        return 100
    for package in packages:
        if Path(f"/lib/systemd/system/{package}.service").exists():
            subprocess.run(["systemctl", "start", package], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
