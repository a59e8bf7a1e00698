"""`market-platform ui`: the Dagster UI on the platform's database and lake."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from market_platform.cli.base import (
    PROJECT_ROOT,
    _store,
    dagster_env,
    fail_cleanly,
    main,
)


@main.command()
@click.option("--port", default=3000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@fail_cleanly
def ui(port: int, host: str) -> None:
    """Start the Dagster UI (dagster dev) on the platform's database and lake."""
    store = _store()
    store.init_schema()
    env = {**os.environ, **dagster_env()}
    dagster = Path(sys.executable).with_name("dagster")
    click.echo(f"Dagster UI on http://{host}:{port} (DAGSTER_HOME={env['DAGSTER_HOME']})")
    os.execve(
        str(dagster),
        [str(dagster), "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"), "-h", host, "-p", str(port)],
        env,
    )
