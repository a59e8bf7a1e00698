"""`market-platform`: the command line of the platform, one module per group of commands.

Every command that fails on bad input or an unreachable service prints one line starting with
`error:` on stderr and exits with status 2; no traceback, no secret.
"""

from market_platform.cli import (  # noqa: F401  (registers the commands)
    analytics,
    db,
    demo,
    history,
    replay,
    snapshots,
    stream,
    ui,
    worker,
)
from market_platform.cli.base import main

__all__ = ["main"]
