"""Entry point: ``echoes [--option=value ...]`` or ``python -m echoes``."""

import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from . import config
from .embedded import EmbeddedError
from .server import serve


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the configuration and serve until stopped."""
    settings = config.load_or_exit(sys.argv if argv is None else argv, os.environ)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        asyncio.run(serve(settings))
    except EmbeddedError as e:
        print(f"echoes: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
