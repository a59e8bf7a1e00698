"""`market-platform db`: the tick store."""

from __future__ import annotations

import json

import click

from market_platform.cli.base import (
    _store,
    fail_cleanly,
    main,
    redact,
)


@main.group()
def db() -> None:
    """The tick store database (MARKET_DB_URL, or an embedded PostgreSQL under the home)."""


@db.command("init")
@fail_cleanly
def db_init() -> None:
    """Create or upgrade the tick store schema, and create the partitions ahead."""
    store = _store()
    applied = store.init_schema()
    maintained = store.maintain()
    click.echo(f"tick store: {redact(store.url)} ({store.variant()})")
    click.echo(f"migrations applied: {len(applied)}" + (f" ({', '.join(applied)})" if applied else ""))
    click.echo(f"maintenance: {json.dumps(maintained, default=str)}")


@db.command("status")
@fail_cleanly
def db_status() -> None:
    """Print the schema version and the rows and size of each table."""
    click.echo(json.dumps(_store().status(), indent=2, default=str))


@db.command("stop")
@fail_cleanly
def db_stop() -> None:
    """Stop the embedded PostgreSQL server (no effect when MARKET_DB_URL is set)."""
    from market_platform.storage.timescale import stop_embedded

    click.echo("stopped" if stop_embedded() else "no embedded server was running")
