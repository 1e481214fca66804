"""The sd_notify protocol: READY=1, STOPPING=1 and WATCHDOG=1 as datagrams to $NOTIFY_SOCKET.

A dozen lines do it (libsystemd's sd_notify(3) is the reference); a package for it would
bring a C build (systemd-python) or an unmaintained dependency.
"""

import os
import socket
from collections.abc import Mapping


def notify(message: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send ``message`` to systemd; False when not run by systemd (no NOTIFY_SOCKET)."""
    address = environ.get("NOTIFY_SOCKET", "")
    if not address.startswith(("/", "@")):
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:
        return False
    return True


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None when it is off.

    WATCHDOG_PID is not checked: with --processes the workers ping (NotifyAccess=all).
    """
    usec = environ.get("WATCHDOG_USEC", "")
    return int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None
