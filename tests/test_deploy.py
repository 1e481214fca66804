"""README.md's "Deploy on a VM", run as written: the command blocks of steps 1, 2, 3 and 5.

They run as root in a shell on a machine of the test's own: mount, network and PID
namespaces, where /etc, /opt, /var and /root are copy-on-write overlays of this machine's
(their changes land in the test's directory; the host sees none), /run is empty, and
loopback is private, so Redis, echoes and nginx listen on the README's own ports (6379, 8000,
80). The blocks run in a copy of this checkout (step 1 edits conf/redis.conf), with the
packages .ci/run installs. It proves that a newcomer who types them gets an echoes under the
unit's credential, behind nginx, answering an authenticated user.

What differs from a real machine, and nothing else (each explained where it is set up):
stand-ins for systemctl, journalctl and apt-get first on PATH (tests/standins/: no systemd
runs here, and packages are not installed by the test); the answers to htpasswd's and curl's
password prompts, written on stdin as each prompt appears; and pip installing from wheels
built beforehand, since the namespace has no network.
"""

import dataclasses
import hashlib
import json
import os
import re
import select
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, needs, readme_block, until

STANDINS = ROOT / "tests" / "standins"
STEP = "<!-- tests/test_deploy.py runs the commands in the next block: step {} -->"
# The admin's password, as step 1's sed writes it into conf/redis.conf.
ADMIN_PASSWORD = "another-long-password"
# What olivia types at htpasswd's and curl's prompts.
OLIVIA_PASSWORD = "olivias-password"
PROMPTS = {
    "New password:": OLIVIA_PASSWORD,
    "Re-type new password:": OLIVIA_PASSWORD,
    "Enter host password for user 'olivia':": OLIVIA_PASSWORD,
}
# The host's files that the blocks change inside the namespace: unchanged outside it.
HOST_FILES = ("/etc/redis/redis.conf", "/etc/nginx/sites-enabled", "/etc/echoes", "/opt/echoes")

# PID 1 of the namespace: reaps the processes the services leave to it, as init does.
REAPER = """
import os, time
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.1)
"""


def answering(command: list[str], env: dict[str, str], timeout: float) -> tuple[int, str, str]:
    """Run ``command``, answering each prompt of PROMPTS on stdin when it appears on stderr,
    as someone at the keyboard would (without a controlling terminal, htpasswd and curl read
    the password from stdin). Its exit status, stdout and stderr."""
    out, err = bytearray(), bytearray()
    answered = 0  # in err, where the last prompt answered ends
    deadline = time.monotonic() + timeout
    with subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # no controlling terminal
    ) as process:
        assert process.stdin and process.stdout and process.stderr
        streams = {process.stdout.fileno(): out, process.stderr.fileno(): err}
        while streams:
            for fd in select.select(list(streams), [], [], 1)[0]:
                chunk = os.read(fd, 65536)
                streams[fd].extend(chunk)
                if not chunk:
                    del streams[fd]
            text = err.decode(errors="replace")
            while found := [(at, p) for p in PROMPTS if (at := text.find(p, answered)) >= 0]:
                at, prompt = min(found)
                process.stdin.write(PROMPTS[prompt].encode() + b"\n")
                process.stdin.flush()
                answered = at + len(prompt)
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"{command[-1]!r} did not finish in {timeout} s:\n{out}\n{err}")
    return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


@dataclasses.dataclass
class Machine:
    """A root shell in the test's namespaces (``pid``: its PID 1, as seen from outside)."""

    pid: int
    checkout: Path
    env: dict[str, str]

    def run(self, script: str, timeout: float = 300) -> tuple[int, str, str]:
        """``script`` run by bash -euo pipefail (stop at the first failure) in the checkout."""
        enter = ["nsenter", f"--target={self.pid}", "--mount", "--net", "--pid"]
        shell = ["bash", "-euo", "pipefail", "-c", script]
        return answering([*enter, f"--wd={self.checkout}", *shell], self.env, timeout)

    def check(self, script: str) -> str:
        """``script``'s output (stdout), asserting it succeeded."""
        status, out, err = self.run(script)
        assert status == 0, f"{script}\nexited {status}:\n{out}\n{err}\n{self.journal()}"
        return out

    def step(self, number: int) -> str:
        """The README's block of step ``number``, as written; its output."""
        return self.check(textwrap.dedent(readme_block(STEP.format(number))))

    def journal(self) -> str:
        """The services' logs so far, for a failure's message."""
        logs = "journalctl -u redis-server -u echoes -u nginx; cat /var/log/nginx/error.log"
        return self.run(logs + " || true")[1]


def host_state() -> dict[str, str]:
    """What HOST_FILES look like from outside the namespace."""
    state = {}
    for name in HOST_FILES:
        path = Path(name)
        if path.is_dir():
            state[name] = " ".join(sorted(p.name for p in path.iterdir()))
        else:
            state[name] = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""
    return state


def wheelhouse(checkout: Path, directory: Path, path: str) -> None:
    """Wheels of everything install.sh's pip installs, built here, where pip can reach its
    index, by the python3 install.sh runs (on ``path``): in the namespace, without a
    network, pip installs from them."""
    python3 = shutil.which("python3", path=path)
    assert python3, "no python3 on PATH"
    builder = directory.parent / "wheel-builder"
    subprocess.run([python3, "-m", "venv", builder], check=True, timeout=120)
    build = ["setuptools>=68"]  # pyproject.toml's build requirement, for pip's build of echoes
    subprocess.run(
        [builder / "bin" / "pip", "wheel", "--quiet", "-w", directory, *build, checkout],
        check=True,
        timeout=600,
        capture_output=True,
    )


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[Machine]:
    checkout = tmp_path / "checkout"
    ignored = (".venv", ".git", "*.egg-info", "__pycache__", "*_cache", "echoes-data", "build")
    shutil.copytree(ROOT, checkout, ignore=shutil.ignore_patterns(*ignored, ".hypothesis"))
    # The stand-ins, first on PATH (tests/standins/ says what each does).
    standins = tmp_path / "standins"
    standins.mkdir()
    for name, script in [("systemctl", "systemd.py"), ("journalctl", "systemd.py")]:
        (standins / name).symlink_to(STANDINS / script)
    (standins / "apt-get").symlink_to(STANDINS / "apt_get.py")
    env = {
        "PATH": f"{standins}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "USER": "root",
        "LANG": "C.UTF-8",
        # No network in the namespace: pip installs from the wheels built above, only.
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(tmp_path / "wheels"),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    wheelhouse(checkout, tmp_path / "wheels", env["PATH"])
    overlays = ""
    for top in ("etc", "opt", "var", "root"):
        upper, work = tmp_path / "overlay" / top, tmp_path / "overlay" / f"{top}.work"
        upper.mkdir(parents=True)
        work.mkdir()
        options = f"lowerdir=/{top},upperdir={upper},workdir={work}"
        overlays += f"mount -t overlay overlay -o {options} /{top}\n"
    namespaces = ["--mount", "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]
    holder = subprocess.Popen(
        ["unshare", *namespaces, sys.executable, "-c", REAPER],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    try:
        children = Path(f"/proc/{holder.pid}/task/{holder.pid}/children")
        deadline = time.monotonic() + 10
        while not children.read_text().split():
            assert holder.poll() is None and time.monotonic() < deadline, "unshare failed"
            time.sleep(0.01)
        machine = Machine(int(children.read_text().split()[0]), checkout, env)
        machine.check(
            "mount --make-rprivate /\n"  # nothing mounted here propagates to the host
            + overlays
            + "mount -t tmpfs tmpfs /run\n"
            + "ip link set lo up\n"
        )
        yield machine
    finally:
        holder.kill()  # --kill-child: PID 1 of the namespace dies, and every process in it
        holder.wait()


not_root = os.geteuid() != 0 and not os.environ.get("CI")


@pytest.mark.skipif(not_root, reason="runs the deploy commands as root, in namespaces (CI has it)")
@needs("unshare")
@needs("nsenter")
@needs("ip")
@needs("nginx")
@needs("redis-server")
@needs("redis-cli")
@needs("htpasswd")
@needs("curl")
@pytest.mark.timeout(600)
def test_deploy_on_a_vm_runs_as_written(machine):
    before = host_state()
    assert f">ADMIN-PASSWORD/>{ADMIN_PASSWORD}/" in readme_block(STEP.format(1))
    admin = f"REDISCLI_AUTH={ADMIN_PASSWORD} redis-cli --user admin"

    # 1. Redis and nginx, installed and running; Redis restarted with conf/redis.conf's lines.
    machine.step(1)
    assert "NOAUTH" in machine.check("redis-cli ping")  # the default user is off
    assert machine.check(f"{admin} CONFIG GET maxmemory-policy").split()[1] == "noeviction"

    # 2. echoes installed and started; it is ready (the unit's Type=notify: READY=1 came).
    output = machine.step(2)
    assert "not started" in output  # install.sh, before the URL held a password
    health = machine.check("curl -s -w '\\n%{http_code}' localhost:8000/health").splitlines()
    assert health[-1] == "200" and json.loads(health[0])["status"] == "ok", health
    # echoes got the URL from the credential (its config file sets none): Redis sees it as
    # the echoes user (the default user, off, would have refused it).
    assert not re.search("^redis_url", machine.check("cat /etc/echoes/echoes.conf"), re.M)
    clients = machine.check(f"{admin} CLIENT LIST")
    assert "user=echoes" in clients, clients

    # 3. The checks and the logs.
    output = machine.step(3)
    assert '"status":"ok"' in output.replace(" ", ""), output
    assert "echoes_build_info" in output  # /metrics
    # journalctl -u echoes has an access line per request (written within 0.1 s), at
    # priority info: echoes knew its stderr for the journal's ($JOURNAL_STREAM).
    until(lambda: "path=/health status=200" in machine.check("journalctl -u echoes"))
    assert "path=/health" not in machine.check("journalctl -u echoes -p warning")

    # 5. nginx in front: olivia, with the password she typed, gets her (empty) inbox.
    output = machine.step(5)
    assert json.loads(output) == []
    # Through nginx, as olivia whatever From she claims, a message lands; a wrong password
    # gets nothing.
    curl = f"curl -s -u olivia:{OLIVIA_PASSWORD} localhost"
    message = {"idempotencyKey": "000000000001", "destination": ["olivia"], "body": "hello"}
    sent = machine.check(f"{curl}/send -H 'From: maurice' -d '{json.dumps(message)}'")
    assert json.loads(sent) == {"sent": 1, "duplicates": 0}
    [record] = json.loads(machine.check(f"{curl}/receive -X POST"))
    assert record["origin"] == "olivia" and record["body"] == "hello"
    wrong = machine.check("curl -s -o /dev/null -w '%{http_code}' -u olivia:x localhost/receive")
    assert wrong == "401"

    assert host_state() == before
