"""The Redis key layout: every key and channel name echoes uses is built here.

An inbox's keys share the hash tag ``{<encoded name>}``, so they live in one Redis Cluster
slot and one script can touch them all. Names are base64url-encoded (UTF-8, no padding)
before they go into a key: the encoding is injective and its alphabet has no ``:``, ``{``,
``}``, ``*`` or white space, so no name can reach or collide with another inbox's keys.

    <prefix>{<name>}:m          hash: record id -> record (records.py's compact form), and
                                while indexed "#b" -> the bytes of the records, "#x" -> when
                                the inbox's keys expire (ms: a put extends them only when its
                                record would outlive them, without asking PTTL) and "#s" ->
                                the highest score given
    <prefix>{<name>}:m:<token>  string: a record of records.BIG_RECORD bytes or more, whole (its
                                body key; the hash holds its stub), which lives as long as the
                                record, and once taken as long as its parked batch; written at
                                ``:m:<token>:new`` for its put, which renames it (put.lua)
    <prefix>{<name>}:i          sorted set: record id -> score, the record's expiry in
                                microseconds by Redis's clock, or just past the score before
                                it where that is later (a shortened ttl): arrival order; only
                                while the inbox holds two records or more
    <prefix>{<name>}:d          sorted set: record id -> minus when it was consumed (ms,
                                newest first), for --dedup-window: tombstones of consumed
                                copies and acks; a take drops those past the window once the
                                oldest is an eighth of a window past it
    <prefix>{<name>}:a:<token>  list: a consumed batch kept for retries under its attempt token
    <prefix>{<name>}:p          hash: "<ms>" -> how many records were parked in batches that
                                expire by then (one field per sixteenth of --attempt-ttl), and
                                "#" -> their sum: parked records count against the inbox's cap
    <prefix>{<name>}:w          channel: a record arrived (only with --wake=publish)
    <prefix>{<name>}:s          hash: ``name``'s quotas as a sender (lua/quotas.lua): its
                                request rate's due time, the bytes of its live records in
                                other inboxes, by when they expire, and when the hash expires;
                                in the sender's own slot (a take of ``name``'s inbox counts its
                                request in the same script call)

An inbox of one record is its ``:m`` hash alone, which expires with that record (one key per
small inbox: most of what Redis spends on an inbox of one is per key). The ``:m`` and ``:i``
keys of a larger inbox live as long as its newest record, plus an eighth of --message-ttl
(at most an hour), so that few puts pay for extending them; ``:p`` likewise outlives its
newest parked batch, ``:d`` its newest tombstone by the window. An abandoned inbox leaves
nothing behind. The first design's ``:q`` (sorted set) and ``:r`` (hash) keys are read only
by ``python -m echoes.store.migrate``.

Waiting requests are woken through one subscription per waited-on inbox
(echoes.wake.subscriptions): the keyspace events of its ``:m`` key (``--wake=keyspace``: a put
is an ``hset`` there), or its ``:w`` channel (``--wake=publish``).
"""

import base64
import functools
from dataclasses import dataclass

# Keyspace events (K) of hash commands (h); a record's arrival is an "hset" on its records.
NOTIFY_FLAGS = "Kh"
ARRIVAL_EVENT = b"hset"
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

    records: str
    index: str
    tombstones: str
    parked: str
    channel: str
    tag: str

    def body(self, token: str) -> str:
        """The key a big record is stored whole at (lua/common.lua's body_key makes the same)."""
        return f"{self.records}:{token}"

    def arriving(self, token: str) -> str:
        """Where echoes writes a big record for its put, which renames it to ``body``."""
        return f"{self.records}:{token}:new"

    def attempt(self, token: str) -> str:
        """The key a batch taken under ``token`` is parked at."""
        return f"{self.tag}:a:{token}"


@dataclass(frozen=True)
class Keys:
    """Key and channel names under one configurable prefix."""

    prefix: str

    def inbox(self, name: str) -> Inbox:
        """The keys of ``name``'s inbox (the same few names come again and again: kept)."""
        return _inbox(self.prefix, name)

    def sender(self, name: str) -> str:
        """The key of ``name``'s quotas as a sender (in the slot of its own inbox)."""
        return f"{_inbox(self.prefix, name).tag}:s"

    def legacy(self, name: str) -> tuple[str, str]:
        """The first design's queue (sorted set) and records (hash) of ``name``'s inbox."""
        tag = f"{self.prefix}{{{encode_name(name)}}}"
        return f"{tag}:q", f"{tag}:r"

    def wake_channel(self, name: str, wake: str, db: int) -> str:
        """The channel that announces arrivals in ``name``'s inbox."""
        inbox = self.inbox(name)
        if wake == "publish":
            return inbox.channel
        return f"__keyspace@{db}__:{inbox.records}"


@functools.lru_cache(maxsize=8192)
def _inbox(prefix: str, name: str) -> Inbox:
    tag = f"{prefix}{{{encode_name(name)}}}"
    return Inbox(
        records=f"{tag}:m",
        index=f"{tag}:i",
        tombstones=f"{tag}:d",
        parked=f"{tag}:p",
        channel=f"{tag}:w",
        tag=tag,
    )
