#!/usr/bin/env python3
"""Stand-ins for systemctl and journalctl where no systemd runs (tests/test_deploy.py).

Run as ``systemctl`` or ``journalctl`` (symlinks to this file, first on PATH), inside the
private namespaces of tests/test_deploy.py. They do what README.md's "Deploy on a VM" and
systemd/install.sh ask of systemd, reading the unit files as systemd would
(/etc/systemd/system, then /lib/systemd/system), and refuse anything else:

- a service starts as its unit says: ExecStartPre, then ExecStart in systemd's clean
  environment, as its User and Group (DynamicUser=yes: nobody), with its UMask and
  LimitNOFILE, its RuntimeDirectory and StateDirectory made, its LoadCredential files copied
  to $CREDENTIALS_DIRECTORY; Type=notify waits for READY=1 on $NOTIFY_SOCKET (unless
  --no-block), Type=forking for ExecStart to exit, then reads PIDFile;
- its stdout and stderr go to a log that journalctl prints, named by $JOURNAL_STREAM as
  journald's stream is (echoes then starts each line with its priority, ``<6>``);
- stop sends SIGTERM to the main process's group (systemd kills the unit's cgroup), reload
  runs ExecReload with $MAINPID, and fails when the unit is not running, as systemd does;
- not emulated: the sandboxing (Protect*, Private*, SystemCallFilter...), dependencies
  between units, Restart=, the watchdog.
"""

import contextlib
import grp
import os
import pwd
import re
import resource
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import NoReturn

STATE = Path("/run/systemd-standin")  # the namespace's own /run (a tmpfs)
UNITS = (Path("/etc/systemd/system"), Path("/lib/systemd/system"))
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
START_SECONDS = 90  # systemd's default TimeoutStartSec
STOP_SECONDS = 15


def fail(message: str, status: int = 1) -> NoReturn:
    print(message, file=sys.stderr)
    sys.exit(status)


def unit_name(name: str) -> str:
    return name if "." in name else name + ".service"


def unit_path(name: str) -> Path:
    for directory in UNITS:
        if (directory / name).exists():
            return directory / name
    fail(f"Unit {name} not found.", 5)


def read_unit(path: Path) -> dict[str, list[str]]:
    """The unit's settings, each key's values in order (an empty assignment resets a list)."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        key, equals, value = line.strip().partition("=")
        if equals and not key.startswith(("#", ";")):
            values = settings.setdefault(key.strip(), [])
            if value.strip():
                values.append(value.strip())
            else:
                values.clear()
    return settings


def one(unit: dict[str, list[str]], key: str, default: str = "") -> str:
    """A setting that takes one value: its last assignment."""
    values = unit.get(key)
    return values[-1] if values else default


def main_pid(name: str) -> int | None:
    """The unit's main process, if it runs (a zombie does not)."""
    try:
        pid = int((STATE / f"{name}.pid").read_text())
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ValueError):
        return None
    return pid if stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X") else None


def account(unit: dict[str, list[str]]) -> tuple[int, int] | None:
    """The uid and gid the service runs as; None for root."""
    user = one(unit, "User") or ("nobody" if one(unit, "DynamicUser") == "yes" else "")
    if not user:
        return None
    entry = pwd.getpwnam(user)
    group = one(unit, "Group")
    return entry.pw_uid, grp.getgrnam(group).gr_gid if group else entry.pw_gid


def directories(unit: dict[str, list[str]], ids: tuple[int, int] | None) -> dict[str, str]:
    """Make the unit's runtime and state directories; their environment variables."""
    env = {}
    for key, base, variable in (
        ("RuntimeDirectory", "/run", "RUNTIME_DIRECTORY"),
        ("StateDirectory", "/var/lib", "STATE_DIRECTORY"),
    ):
        paths = [Path(base, d) for value in unit.get(key, []) for d in value.split()]
        for path in paths:
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(int(one(unit, key + "Mode", "0755"), 8))
            if ids:
                os.chown(path, *ids)
        if paths:
            env[variable] = ":".join(map(str, paths))
    return env


def credentials(
    name: str, unit: dict[str, list[str]], ids: tuple[int, int] | None
) -> dict[str, str]:
    """LoadCredential=ID:PATH: a copy of each file, readable by the service alone."""
    if not unit.get("LoadCredential"):
        return {}
    directory = Path("/run/credentials", name)
    directory.mkdir(parents=True, exist_ok=True)
    for value in unit["LoadCredential"]:
        key, _, source = value.partition(":")
        try:
            data = Path(source).read_bytes()
        except OSError as e:
            fail(f"{name}: Failed to set up credentials: {e}")
        target = directory / key
        target.write_bytes(data)
        target.chmod(0o400)
        if ids:
            os.chown(target, *ids)
    directory.chmod(0o500)
    if ids:
        os.chown(directory, *ids)
    return {"CREDENTIALS_DIRECTORY": str(directory)}


def command(line: str, pid: int | None = None) -> tuple[list[str], bool]:
    """An Exec line's argv, $MAINPID substituted; and whether a failure counts ("-" not)."""
    checked = not line.startswith("-")
    line = line.lstrip("-@+!:")
    line = re.sub(r"\$\{?MAINPID\}?", str(pid or ""), line)
    return shlex.split(line), checked


class Service:
    """How systemd would run a unit's commands: user, limits, environment, log."""

    def __init__(self, name: str):
        self.name = name
        self.path = unit_path(name)
        self.unit = read_unit(self.path)
        self.ids = account(self.unit)
        STATE.mkdir(parents=True, exist_ok=True)
        self.log = STATE / f"{name}.log"
        self.log.touch()

    def preexec(self) -> None:
        os.umask(int(one(self.unit, "UMask", "0022"), 8))
        files = one(self.unit, "LimitNOFILE")
        if files:
            # At most the hard limit already set: a container may not let root raise it.
            files = min(int(files), resource.getrlimit(resource.RLIMIT_NOFILE)[1])
            resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))
        if self.ids:
            os.setgroups([])
            os.setgid(self.ids[1])
            os.setuid(self.ids[0])

    def spawn(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:
            stat = os.fstat(log.fileno())
            env = {"PATH": PATH, "LANG": "C.UTF-8", "INVOCATION_ID": uuid.uuid4().hex} | env
            env["JOURNAL_STREAM"] = f"{stat.st_dev}:{stat.st_ino}"
            return subprocess.Popen(
                argv,
                cwd="/",
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=self.preexec,
                start_new_session=True,
            )

    def run(self, key: str, pid: int | None = None) -> None:
        """Each of the unit's ``key`` lines (ExecStartPre, ExecReload), in turn, to the end."""
        for line in self.unit.get(key, []):
            argv, checked = command(line, pid)
            if self.spawn(argv, {"MAINPID": str(pid or "")}).wait() and checked:
                self.failed("the control process exited with error code")

    def failed(self, why: str) -> NoReturn:
        fail(
            f"Job for {self.name} failed because {why}.\n"
            f'See "systemctl status {self.name}" and "journalctl -xeu {self.name}" for details.'
        )

    def start(self, block: bool = True) -> None:
        if main_pid(self.name):
            return
        self.run("ExecStartPre")
        env = directories(self.unit, self.ids) | credentials(self.name, self.unit, self.ids)
        kind = one(self.unit, "Type", "simple")
        if kind not in ("simple", "exec", "notify", "forking"):
            fail(f"{self.name}: Type={kind} is not emulated by this stand-in")
        notify = None
        if kind == "notify":
            address = STATE / f"{self.name}.notify"
            address.unlink(missing_ok=True)
            notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            notify.bind(str(address))
            if self.ids:
                os.chown(address, *self.ids)
            env["NOTIFY_SOCKET"] = str(address)
        [argv] = [command(line)[0] for line in self.unit["ExecStart"]]
        process = self.spawn(argv, env)
        pid = process.pid
        if kind == "forking":
            if process.wait(START_SECONDS):
                self.failed("the control process exited with error code")
            pid = self.pid_file()
        (STATE / f"{self.name}.pid").write_text(str(pid))
        if notify and block:
            self.ready(notify, process)

    def pid_file(self) -> int:
        path = Path(one(self.unit, "PIDFile"))
        deadline = time.monotonic() + START_SECONDS
        while not (path.exists() and path.read_text().strip()):
            if time.monotonic() > deadline:
                self.failed(f"it wrote no {path}")
            time.sleep(0.05)
        return int(path.read_text())

    def ready(self, notify: socket.socket, process: subprocess.Popen[bytes]) -> None:
        """Wait for READY=1, as systemctl waits for a Type=notify service."""
        notify.settimeout(0.2)
        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                if "READY=1" in notify.recv(4096).decode().splitlines():
                    return
            except TimeoutError:
                pass
            if process.poll() is not None:
                self.failed("the control process exited with error code")
            if time.monotonic() > deadline:
                self.failed("a timeout was exceeded")

    def stop(self) -> None:
        pid = main_pid(self.name)
        if pid is None:
            return
        deadline = time.monotonic() + STOP_SECONDS
        with contextlib.suppress(ProcessLookupError):
            os.killpg(os.getpgid(pid), signal.SIGTERM)
            while main_pid(self.name):
                if time.monotonic() > deadline:
                    os.killpg(os.getpgid(pid), signal.SIGKILL)
                time.sleep(0.05)
        (STATE / f"{self.name}.pid").unlink()

    def reload(self) -> None:
        pid = main_pid(self.name)
        if pid is None:
            fail(f"Failed to reload {self.name}: Unit {self.name} is not active.")
        if not self.unit.get("ExecReload"):
            fail(f"Failed to reload {self.name}: Job type reload is not applicable for unit.")
        self.run("ExecReload", pid)
        if one(self.unit, "Type") == "forking":
            (STATE / f"{self.name}.pid").write_text(str(self.pid_file()))

    def status(self) -> int:
        pid = main_pid(self.name)
        enabled = "enabled" if (STATE / "enabled" / self.name).exists() else "disabled"
        print(f"● {self.name} - {one(self.unit, 'Description')}")
        print(f"     Loaded: loaded ({self.path}; {enabled})")
        print("     Active: " + (f"active (running); Main PID: {pid}" if pid else "inactive"))
        print()
        journal([self.name], None, 10)
        return 0 if pid else 3


def systemctl(args: list[str]) -> int:
    options = {a for a in args if a.startswith("-")}
    verb, *names = [a for a in args if not a.startswith("-")] or ["list-units"]
    if options - {"--no-block", "--now", "-q", "--quiet", "--no-pager"}:
        fail(f"systemctl stand-in: options {sorted(options)} are not emulated")
    services = [Service(unit_name(n)) for n in names]
    block = "--no-block" not in options
    if verb == "daemon-reload":
        return 0
    if verb == "enable":
        for service in services:
            (STATE / "enabled").mkdir(exist_ok=True)
            (STATE / "enabled" / service.name).touch()
            if "--now" in options:
                service.start(block)
    elif verb == "start":
        for service in services:
            service.start(block)
    elif verb == "stop":
        for service in services:
            service.stop()
    elif verb == "restart":
        for service in services:
            service.stop()
            service.start(block)
    elif verb == "reload":
        for service in services:
            service.reload()
    elif verb == "is-active":
        return 0 if all(main_pid(s.name) for s in services) else 3
    elif verb == "status":
        return max(service.status() for service in services)
    else:
        fail(f"systemctl stand-in: {verb} is not emulated")
    return 0


PRIORITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")


def journal(names: list[str], priority: int | None, lines: int | None) -> None:
    """The units' logs; a line starting <N> has priority N (stripped), others info (6)."""
    shown = []
    for name in names:
        path = STATE / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        for line in text.splitlines():
            level = 6
            if re.match(r"<[0-7]>", line):
                level, line = int(line[1]), line[3:]
            if priority is None or level <= priority:
                shown.append(f"{name.removesuffix('.service')}: {line}")
    for line in shown[-lines:] if lines else shown:
        print(line)


def journalctl(args: list[str]) -> int:
    names, priority, lines = [], None, None
    while args:
        arg = args.pop(0)
        if arg in ("-u", "--unit", "-p", "--priority", "-n", "--lines"):
            value = args.pop(0)
        elif arg.startswith("--") and "=" in arg:
            arg, value = arg.split("=", 1)
        else:
            value = ""
        if arg in ("-u", "--unit"):
            names.append(unit_name(value))
        elif arg in ("-p", "--priority"):
            priority = int(value) if value.isdigit() else PRIORITIES.index(value)
        elif arg in ("-n", "--lines"):
            lines = int(value)
        elif arg in ("-f", "--follow"):
            # Prints what is there and exits: journalctl -f follows until Ctrl-C, and a test
            # has no one to press it.
            pass
        elif arg not in ("--no-pager", "-x", "-e"):
            fail(f"journalctl stand-in: {arg} is not emulated")
    if not names:
        fail("journalctl stand-in: only -u UNIT is emulated")
    journal(names, priority, lines)
    return 0


if __name__ == "__main__":
    tool = Path(sys.argv[0]).name
    sys.exit({"systemctl": systemctl, "journalctl": journalctl}[tool](sys.argv[1:]))
