"""Entry point: ``echoes [serve] [--option value ...]``, ``echoes send|receive|exchange|status|
follow`` (the clients), or ``python -m echoes``."""

import os
import shutil
import sys
import tempfile
from collections.abc import Sequence

from . import config, logs, options
from .client import cli
from .embedded import EmbeddedError


def main(argv: Sequence[str] | None = None) -> None:
    """Run a client command, or parse the configuration and serve until stopped."""
    argv = sys.argv if argv is None else argv
    if len(argv) > 1 and argv[1] in cli.COMMANDS:
        try:
            args = options.parse(argv[1:])
        except config.ConfigError as e:
            print(f"echoes: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        raise SystemExit(cli.run(args, os.environ))
    reload = options.Reloader(argv, os.environ)
    settings = reload.load_or_exit()
    logs.configure(settings.log_level, settings.log_format, with_pid=settings.processes != 1)
    metrics_dir = None
    if settings.processes != 1:
        # Workers sum their metrics through files; prometheus_client reads this variable
        # when it is first imported, so it is set before the server (and metrics) import.
        metrics_dir = tempfile.mkdtemp(prefix="echoes-metrics-")
        os.environ[config.METRICS_DIR_ENV] = metrics_dir
    from .server import run

    try:
        raise SystemExit(run(settings, reload=reload))
    except EmbeddedError as e:
        print(f"echoes: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
