"""Which web pages may call echoes: the cross-site request check and the CORS headers.

echoes believes the From header that a proxy sets for a logged-in user, so a page on another
site must not be able to make that user's browser POST to it: a "simple" request (a form, or
fetch with text/plain) needs no preflight and carries the user's credentials. Browsers send
``Origin`` with every POST; a POST whose Origin is neither the server's own nor allowed by
--cors-origins is refused before anything is read or stored. Clients that are not browsers
(curl, scripts) send no Origin and are not affected.
"""

from collections.abc import Mapping
from urllib.parse import urlsplit


class Origins:
    """The origins allowed to call the API from a browser (``--cors-origins``)."""

    def __init__(self, allowed: str):
        items = {o.strip().rstrip("/").lower() for o in allowed.split(",") if o.strip()}
        self.any = "*" in items
        self.allowed = frozenset(items - {"*"})

    def refusal(self, headers: Mapping[str, str]) -> str | None:
        """Why a state-changing request with these headers is refused, or None."""
        origin = headers.get("Origin")
        if origin is None or self.any or origin.lower() in self.allowed:
            return None
        if same_origin(origin, headers.get("Host", "")):
            return None
        return (
            f"cross-origin request from {origin[:100]!r} refused: a page may call echoes only"
            " from the server's own origin or one listed in --cors-origins"
        )

    def cors_header(self, headers: Mapping[str, str]) -> str | None:
        """The Access-Control-Allow-Origin value for a request with these headers, if any."""
        if self.any:
            return "*"
        origin = headers.get("Origin")
        if origin is not None and origin.lower() in self.allowed:
            return origin
        return None


def same_origin(origin: str, host: str) -> bool:
    """Whether ``origin`` names the host (and port) the request was sent to."""
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return False
    return bool(netloc) and netloc.lower() == host.lower()
