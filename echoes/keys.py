"""The Redis key layout: every key and channel name echoes uses is built here.

An inbox's keys share the hash tag ``{<encoded name>}``, so they live in one Redis Cluster
slot and one script can touch them all. Names are base64url-encoded (UTF-8, no padding)
before they go into a key: the encoding is injective and its alphabet has no ``:``, ``{``,
``}``, ``*`` or white space, so no name can reach or collide with another inbox's keys.

    <prefix>{<name>}:q          sorted set: record ids by arrival (microseconds)
    <prefix>{<name>}:r          hash: record id -> "<expires ms>:<ack flag>:<record JSON>"
    <prefix>{<name>}:a:<token>  list: a consumed batch kept for retries under its attempt token
"""

import base64
from dataclasses import dataclass


def encode_name(name: str) -> str:
    """Encode a user name for use inside a key."""
    return base64.urlsafe_b64encode(name.encode("utf-8")).rstrip(b"=").decode("ascii")


def decode_name(encoded: str) -> str:
    """Invert encode_name."""
    return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode("utf-8")


@dataclass(frozen=True)
class Inbox:
    """The keys of one user's inbox."""

    queue: str
    records: str
    tag: str

    def attempt(self, token: str) -> str:
        """The key a batch taken under ``token`` is parked at."""
        return f"{self.tag}:a:{token}"


@dataclass(frozen=True)
class Keys:
    """Key names under one configurable prefix."""

    prefix: str

    def inbox(self, name: str) -> Inbox:
        """The keys of ``name``'s inbox."""
        tag = f"{self.prefix}{{{encode_name(name)}}}"
        return Inbox(queue=f"{tag}:q", records=f"{tag}:r", tag=tag)
