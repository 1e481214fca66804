"""What /health and /metrics report about wake-ups: the listener writes it, HTTP reads it."""

from dataclasses import dataclass


@dataclass
class ListenerState:
    """What /health and /metrics report about wake-ups."""

    mode: str
    connected: bool = False
    notifications: bool = False
    servers: int = 0  # servers subscribed on (a Cluster's primaries)
