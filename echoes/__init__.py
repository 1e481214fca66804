"""echoes: a Redis-backed message inbox with an HTTP JSON API."""

__version__ = "0.1.0"
