"""The client commands: ``echoes send``, ``receive``, ``exchange``, ``status`` and ``follow``.

A thin layer over echoes.client's Client; the subcommands hang on the one parser of options.py
(``echoes`` alone, or ``echoes serve``, runs the server). Answers go to standard output as
JSON; a refusal (4xx) or an answer that is not echoes' prints why on standard error and
exits 1; a command line that cannot run (no name, no password, a state file in use) exits 2.

Credentials for a proxy that authenticates (conf/nginx.conf): ``--user NAME[:PASSWORD]``
(HTTP Basic), the password from ``$ECHOES_PASSWORD``, a netrc file (``--netrc-file``,
default ~/.netrc) or a prompt; or ``--header 'Authorization: Bearer ...'``. A password is
never printed: errors show the URL without it, and any message that would carry it has it
replaced by ``***``.
"""

import argparse
import getpass
import json
import netrc
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from .clients import Client
from .protocol import DEFAULT_URL, FOLLOW_WAIT, BadAnswer, EchoesError, Unavailable
from .state import StateInUse

COMMANDS = ("send", "receive", "exchange", "status", "follow")
FOLLOW_HELP = """Long-poll forever and print one JSON record per line, oldest first.

Every batch is taken under an attempt token, so a lost response or a restarted server
neither drops nor repeats a record. 503s and connection errors are retried (Retry-After,
else backoff with jitter), and said on stderr. SIGINT or SIGTERM ends it with status 0 once
what it has is printed. With --state FILE the token of the batch in flight is saved before
each request and cleared only after the batch is printed: a follower killed and restarted
within the server's --attempt-ttl prints that batch again instead of losing it (at least
once across its own crash; without --state, a follower killed mid-request loses the batch
that request took)."""


class _Stop(Exception):
    """SIGINT or SIGTERM while follow waits: stop now (nothing is half-printed)."""


class _Usage(Exception):
    """A command line that cannot run: exit 2 with this message."""


def add_commands(commands: Any) -> None:
    """Add the client subcommands to the parser's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help=f"echoes' URL (default: $ECHOES_URL, else {DEFAULT_URL})")
    common.add_argument(
        "--as",
        dest="caller",
        metavar="NAME",
        help="your name (default: $ECHOES_AS, else the --user name)",
    )
    common.add_argument(
        "--user",
        metavar="NAME[:PASSWORD]",
        help="HTTP Basic credentials for a proxy that authenticates (default: $ECHOES_USER);"
        " without :PASSWORD, the password is $ECHOES_PASSWORD, the netrc file's, or asked",
    )
    common.add_argument(
        "--netrc-file",
        metavar="FILE",
        help="a netrc file whose entry for the URL's host gives the user and password"
        " (default: ~/.netrc, if there is one)",
    )
    common.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a header to send with every request, e.g. 'Authorization: Bearer TOKEN'",
    )
    sending = argparse.ArgumentParser(add_help=False)
    sending.add_argument(
        "--to",
        action="append",
        required=True,
        metavar="NAME",
        help="a destination (repeat for more)",
    )
    sending.add_argument(
        "--key", help="idempotency key (default: a fresh one; reuse it to resend safely)"
    )
    sending.add_argument("--ack", action="store_true", help="ask for an ack when it is consumed")
    sending.add_argument(
        "body", help="the body: JSON if it parses, else a string; - reads it from stdin"
    )
    taking = argparse.ArgumentParser(add_help=False)
    taking.add_argument("--limit", type=int, help="take at most this many records")
    taking.add_argument("--wait", type=float, help="seconds to wait for a record to arrive")
    commands.add_parser(
        "send", parents=[common, sending], help='send a message; prints {"sent": N}'
    )
    commands.add_parser(
        "receive", parents=[common, taking], help="take your records; prints them as a JSON array"
    )
    commands.add_parser(
        "exchange", parents=[common, sending, taking], help="send, then receive, in one request"
    )
    status = commands.add_parser(
        "status",
        parents=[common],
        help="what became of your message's copies: prints each destination's state",
        description="What became of the copies of one of your messages, by its idempotency"
        ' key: for each destination {"destination": D, "state": "waiting" | "consumed" |'
        ' "unknown"}, with consumedAt when consumed (within the server\'s --dedup-window).',
    )
    status.add_argument(
        "--to", action="append", required=True, metavar="NAME", help="a destination (repeat)"
    )
    status.add_argument("--key", required=True, help="the message's idempotency key")
    follow = commands.add_parser(
        "follow",
        parents=[common],
        help="print every record as it arrives, one JSON per line",
        description=FOLLOW_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    follow.add_argument("--state", metavar="FILE", help="where the batch in flight is remembered")
    follow.add_argument("--wait", type=float, default=FOLLOW_WAIT, help="seconds per long poll")


def run(args: argparse.Namespace, environ: Mapping[str, str], out: TextIO = sys.stdout) -> int:
    """Run one client command; the exit status."""
    secrets: list[str] = []
    try:
        client = _client(args, environ, secrets)
        if args.command == "follow":
            return follow(client, args.state, args.wait, out, secrets)
        if args.command == "receive":
            answer: Any = client.receive(args.limit, args.wait)
        elif args.command == "send":
            answer = {"sent": client.send(args.to, body(args.body), args.key, args.ack)}
        elif args.command == "status":
            answer = client.status(args.key, args.to)
        else:
            message = (args.to, body(args.body), args.key, args.ack)
            answer = client.exchange(*message, limit=args.limit, wait=args.wait)
    except (_Usage, StateInUse) as e:
        _say(f"echoes: error: {e}", secrets)
        return 2
    except (EchoesError, Unavailable, BadAnswer) as e:
        _say(f"echoes: error: {e}", secrets)
        return 1
    print(json.dumps(answer, ensure_ascii=False), file=out, flush=True)
    return 0


def _client(args: argparse.Namespace, environ: Mapping[str, str], secrets: list[str]) -> Client:
    """The Client the options name, with its credentials (added to ``secrets``)."""
    url = args.url or environ.get("ECHOES_URL") or DEFAULT_URL
    user, password = _login(args, environ, url)
    secrets += [s for s in (password, urlsplit(url).password) if s]
    caller = args.caller or environ.get("ECHOES_AS") or user or urlsplit(url).username
    if not caller:
        raise _Usage("--as NAME is required (or set ECHOES_AS)")
    headers = dict(_header(h) for h in args.header)
    try:
        client = Client(url, caller, user=user, password=password, headers=headers)
    except ValueError as e:
        raise _Usage(str(e)) from None
    secrets += [v.split(" ", 1)[-1] for k, v in client.headers.items() if k == "Authorization"]
    return client


def _login(
    args: argparse.Namespace, environ: Mapping[str, str], url: str
) -> tuple[str | None, str | None]:
    """The user and password: --user NAME[:PASSWORD] (or the URL's), with the password of
    $ECHOES_PASSWORD, the netrc file or a prompt when the colon is missing."""
    given = args.user or environ.get("ECHOES_USER")
    parts = urlsplit(url)
    if given is None and parts.username is not None:
        return None, None  # the URL's own, read by the Client
    user, colon, password = (given or "").partition(":")
    if colon:
        return user, password
    if "ECHOES_PASSWORD" in environ and user:
        return user, environ["ECHOES_PASSWORD"]
    found = _netrc(args.netrc_file, parts.hostname or "")
    if found and (not user or found[0] in ("", user)):
        return found[0] or user, found[1]
    if not user:
        return None, None
    if sys.stdin.isatty():
        return user, getpass.getpass(f"password of {user} for {parts.hostname}: ")
    raise _Usage(
        f"no password for --user {user}: give --user {user}:PASSWORD, set ECHOES_PASSWORD,"
        " or put it in a netrc file (--netrc-file)"
    )


def _netrc(path: str | None, host: str) -> tuple[str, str] | None:
    """The login and password of ``host`` in the netrc file, if it has them."""
    file = Path(path) if path else Path.home() / ".netrc"
    if not path and not file.exists():
        return None
    try:
        entry = netrc.netrc(file).authenticators(host)
    except (OSError, netrc.NetrcParseError) as e:
        raise _Usage(f"cannot read the netrc file: {e}") from None
    if entry is None or entry[2] is None:
        return None
    return entry[0] or "", entry[2]


def _header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    if not colon or not name.strip() or any(c in text for c in "\r\n"):
        raise _Usage(f"--header takes 'NAME: VALUE', not {text.split(':')[0]!r}...")
    return name.strip(), value.strip()


def _say(message: str, secrets: list[str]) -> None:
    """Print ``message`` on standard error with every secret in it replaced by ***."""
    for secret in secrets:
        message = message.replace(secret, "***")
    print(message, file=sys.stderr, flush=True)


def body(text: str) -> Any:
    """BODY as given: JSON if it parses, else the string itself; ``-``: standard input."""
    if text == "-":
        text = sys.stdin.read()
    try:
        return json.loads(text)
    except ValueError:
        return text


def follow(client: Client, state: str | None, wait: float, out: TextIO, secrets: list[str]) -> int:
    """Print every record as it arrives until SIGINT or SIGTERM; status 0 then.

    Stopped by a signal, it leaves SIGINT and SIGTERM ignored: the process is on its way
    out, and ``timeout`` (and a terminal's Ctrl-C) signal its whole process group too, so a
    second signal arrives while it exits; restored to the default, that one killed it
    (status 130 instead of 0).
    """
    printing = False
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        if stopping:  # the same request again (the process group's copy): already on it
            return
        stopping = True
        if not printing:  # while a batch is printed, the loop stops after it
            raise _Stop

    def retrying(reason: str, delay: float) -> None:
        _say(f"echoes: {reason}; trying again in {delay:.1f} s", secrets)

    follower = client.follower(state, wait, retrying)  # StateInUse: another follower has it
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stopping:
            try:
                answer = client.call(follower.request())
            except Unavailable as e:
                time.sleep(follower.failed(e))
                continue
            printing = True
            for record in answer.records or []:
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            follower.handed_out()
            printing = False
    except _Stop:
        pass
    except (EchoesError, BadAnswer) as e:
        _say(f"echoes: error: {e}", secrets)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_IGN if stopping else handler)
        follower.close()
    return 0
