"""`market-platform db`: the tick store."""

from __future__ import annotations

import json
from typing import Any

import click

from market_platform.cli.base import (
    _store,
    fail_cleanly,
    main,
    redact,
)

_VARIANTS = {
    "timescale": "TimescaleDB: hypertables, columnstore, continuous aggregates",
    "postgres": "plain PostgreSQL: New York day partitions, rollups as views",
}


@main.group()
def db() -> None:
    """The tick store database (MARKET_DB_URL, or an embedded PostgreSQL under the home)."""


@db.command("init")
@fail_cleanly
def db_init() -> None:
    """Create or upgrade the tick store schema, create the partitions ahead, and refresh the
    rollups where minutes were written behind them."""
    store = _store()
    applied = store.init_schema()
    maintained = store.maintain()
    click.echo(f"tick store: {redact(store.url)} ({store.variant()})")
    click.echo(f"migrations applied: {len(applied)}" + (f" ({', '.join(applied)})" if applied else ""))
    click.echo(f"partitions: {len(maintained['created'])} created, {len(maintained['dropped'])} dropped")
    rollups = maintained["rollups"]
    click.echo(f"rollups: {len(rollups['refreshed'])} day ranges refreshed, "
               f"{len(rollups['deferred'])} waiting for their bucket to close")


@db.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as one JSON object (for scripts).")
@fail_cleanly
def db_status(as_json: bool) -> None:
    """Print the variant, migrations, retention, rollups, and the rows, size and oldest and
    newest data of each table."""
    status = _store().status()
    if as_json:
        click.echo(json.dumps(status, indent=2, default=str))
    else:
        click.echo(format_status(status))


@db.command("stop")
@fail_cleanly
def db_stop() -> None:
    """Stop the embedded PostgreSQL server (no effect when MARKET_DB_URL is set)."""
    from market_platform.storage.timescale import stop_embedded

    click.echo("stopped" if stop_embedded() else "no embedded server was running")


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_status(status: dict[str, Any]) -> str:
    """`status()` as a person reads it: one line per fact, then a table of the tables."""
    version = status["server_version"]
    server = f"PostgreSQL {version // 10000}.{version % 10000}"
    if status["timescaledb"]:
        server += f", TimescaleDB {status['timescaledb']}"
    pending = status["pending"]
    latest = status["latest_migration"]
    lines = [
        f"tick store   {status['url']}",
        f"server       {server}",
        f"variant      {status['variant']} ({_VARIANTS[status['variant']]})",
        f"migrations   {status['migrations_applied']} applied" + (f", the newest {latest}" if latest else "")
        + (f"; {len(pending)} pending: {', '.join(pending)} (run `market-platform db init`)" if pending
           else "; none pending"),
    ]
    if status["retention_days"]:
        lines.append("retention    " + ", ".join(f"{t} {d} days" for t, d in status["retention_days"].items()))
    if status["rollups"]:
        names = ", ".join(status["rollups"])
        stale = {name: r["pending_days"] for name, r in status["rollups"].items() if r["pending_days"]}
        if next(iter(status["rollups"].values()))["kind"] == "view":
            lines.append(f"rollups      {names} (views of bars_1m, always current)")
        else:
            lines.append(f"rollups      {names} (continuous aggregates): " + (
                "refresh pending for " + ", ".join(f"{name} {n} day(s)" for name, n in stale.items())
                + " (`market-platform db init` refreshes them; read_bars refreshes what it reads)"
                if stale else "up to date"))
    rows = [("table", "rows", "size", "oldest", "newest", "parts")]
    for name, table in status["tables"].items():
        parts = table.get("partitions", table.get("chunks"))
        rows.append((
            name, f"{table['rows']:,}" + ("" if table["rows_exact"] else " (est.)"), _size(table["bytes"]),
            (table["oldest"] or "-")[:19], (table["newest"] or "-")[:19], "-" if parts is None else str(parts),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines.append("")
    for row in rows:
        lines.append("  ".join(cell.ljust(w) if i in (0, 3, 4) else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
    lines.append("(oldest/newest of quotes, trades, bars_1m: the first and last New York day holding rows; "
                 "parts: day partitions or chunks)")
    return "\n".join(lines)
