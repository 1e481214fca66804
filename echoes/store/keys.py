"""The Redis key layout: every key and channel name echoes uses is built here.

An inbox's keys share the hash tag ``{<encoded name>}``, so they live in one Redis Cluster
slot and one script can touch them all. Names are base64url-encoded (UTF-8, no padding)
before they go into a key: the encoding is injective and its alphabet has no ``:``, ``{``,
``}``, ``*`` or white space, so no name can reach or collide with another inbox's keys.

    <prefix>{<name>}:q          sorted set: record ids by arrival (a number the inbox counts up)
    <prefix>{<name>}:r          hash: record id -> "<expires ms>:<ack flag>:<record JSON>", and
                                "#n" -> the last arrival number
    <prefix>{<name>}:a:<token>  string: a consumed batch kept for retries under its attempt token
    <prefix>{<name>}:p          hash: "<ms>" -> how many records were parked in batches that
                                expire by then (one field per sixteenth of --attempt-ttl), and
                                "#" -> their sum: parked records count against the inbox's cap
    <prefix>{<name>}:w          channel: a record arrived (only with --wake=publish)

The ``:q`` and ``:r`` keys live as long as their newest record, plus an eighth of
--message-ttl (at most an hour), so that few puts pay for extending them; ``:p`` likewise
outlives its newest parked batch. An abandoned inbox leaves nothing behind.

Waiting requests are woken through one subscription per waited-on inbox (echoes.wake.subscriptions):
the keyspace events of its ``:q`` key (``--wake=keyspace``), or its ``:w`` channel
(``--wake=publish``).
"""

import base64
from dataclasses import dataclass

# Keyspace events (K) of sorted-set commands (z); a record's arrival is a "zadd" on its queue.
NOTIFY_FLAGS = "Kz"
ARRIVAL_EVENT = b"zadd"
# The inbox a listener writes to when it cannot read notify-keyspace-events (CONFIG refused)
# to see whether keyspace events arrive. No client can name it: names may not hold controls.
PROBE_NAME = "\x00"


def encode_name(name: str) -> str:
    """Encode a user name for use inside a key."""
    return base64.urlsafe_b64encode(name.encode("utf-8")).rstrip(b"=").decode("ascii")


def decode_name(encoded: str) -> str:
    """Invert encode_name."""
    return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode("utf-8")


def name_in(channel: bytes) -> str:
    """The inbox name a wake-up channel (or keyspace event channel) is about."""
    return decode_name(channel[channel.rindex(b"{") + 1 : channel.rindex(b"}")].decode("ascii"))


@dataclass(frozen=True)
class Inbox:
    """The keys of one user's inbox."""

    queue: str
    records: str
    parked: str
    channel: str
    tag: str

    def attempt(self, token: str) -> str:
        """The key a batch taken under ``token`` is parked at."""
        return f"{self.tag}:a:{token}"


@dataclass(frozen=True)
class Keys:
    """Key and channel names under one configurable prefix."""

    prefix: str

    def inbox(self, name: str) -> Inbox:
        """The keys of ``name``'s inbox."""
        tag = f"{self.prefix}{{{encode_name(name)}}}"
        return Inbox(
            queue=f"{tag}:q", records=f"{tag}:r", parked=f"{tag}:p", channel=f"{tag}:w", tag=tag
        )

    def wake_channel(self, name: str, wake: str, db: int) -> str:
        """The channel that announces arrivals in ``name``'s inbox."""
        inbox = self.inbox(name)
        if wake == "publish":
            return inbox.channel
        return f"__keyspace@{db}__:{inbox.queue}"
