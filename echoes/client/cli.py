"""The client commands: ``echoes send``, ``receive``, ``exchange`` and ``follow``.

A thin layer over echoes.client's Client; the subcommands hang on the one parser of options.py
(``echoes`` alone, or ``echoes serve``, runs the server). Answers go to standard output as
JSON; a refusal (4xx) prints the server's details on standard error and exits 1.
"""

import argparse
import json
import signal
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from .clients import Client
from .protocol import DEFAULT_URL, FOLLOW_WAIT, EchoesError, Follower, State, Unavailable

COMMANDS = ("send", "receive", "exchange", "follow")
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


def add_commands(commands: Any) -> None:
    """Add the client subcommands to the parser's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help=f"echoes' URL (default: $ECHOES_URL, else {DEFAULT_URL})")
    common.add_argument(
        "--as", dest="caller", metavar="NAME", help="your name (default: $ECHOES_AS)"
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
    url = args.url or environ.get("ECHOES_URL") or DEFAULT_URL
    caller = args.caller or environ.get("ECHOES_AS")
    if not caller:
        print("echoes: error: --as NAME is required (or set ECHOES_AS)", file=sys.stderr)
        return 2
    client = Client(url, caller)
    try:
        if args.command == "follow":
            return follow(client, args.state, args.wait, out)
        if args.command == "receive":
            answer: Any = client.receive(args.limit, args.wait)
        elif args.command == "send":
            answer = {"sent": client.send(args.to, body(args.body), args.key, args.ack)}
        else:
            message = (args.to, body(args.body), args.key, args.ack)
            answer = client.exchange(*message, limit=args.limit, wait=args.wait)
    except (EchoesError, Unavailable) as e:
        print(f"echoes: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(answer, ensure_ascii=False), file=out, flush=True)
    return 0


def body(text: str) -> Any:
    """BODY as given: JSON if it parses, else the string itself; ``-``: standard input."""
    if text == "-":
        text = sys.stdin.read()
    try:
        return json.loads(text)
    except ValueError:
        return text


def follow(client: Client, state: str | None, wait: float, out: TextIO) -> int:
    """Print every record as it arrives until SIGINT or SIGTERM; status 0 then."""
    printing = False
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        if not printing:  # while a batch is printed, the loop stops after it
            raise _Stop

    def retrying(reason: str, delay: float) -> None:
        print(f"echoes: {reason}; trying again in {delay:.1f} s", file=sys.stderr, flush=True)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    follower = Follower(client.url, client.caller, State(state), wait, retrying)
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
    except EchoesError as e:
        print(f"echoes: error: {e}", file=sys.stderr)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
    return 0
