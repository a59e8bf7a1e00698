"""Shared pieces of the stream benchmarks: a fresh database, a replay server in its own process.

The replay runs as `python -m market_platform.replay.alpaca_stream` in a process of its own, so
the client measured (alpaca-py, the streamer, COPY) does not share a GIL with the server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Iterator

from market_platform import calendar
from market_platform.storage.timescale import TickStore, create_database, drop_database

ADMIN_URL = os.environ.get("MARKET_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DAY = "2024-11-26"


def ny(day: str, hh_mm: str) -> datetime:
    hour, minute = map(int, hh_mm.split(":"))
    return datetime.combine(calendar.to_date(day), datetime.min.time().replace(hour=hour, minute=minute),
                            tzinfo=calendar.NEW_YORK).astimezone(calendar.UTC)


@contextmanager
def fresh_database() -> Iterator[str]:
    name = f"mp_bench_{uuid.uuid4().hex[:10]}"
    create_database(ADMIN_URL, name)
    url = ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        with TickStore(url) as store:
            store.init_schema()
        yield url
    finally:
        drop_database(ADMIN_URL, name)


@contextmanager
def spool_dir() -> Iterator[Path]:
    """The streamer's spool directory for one run, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="mp_bench_spool_") as path:
        yield Path(path)


@contextmanager
def replay_process(start: datetime, end: datetime, *, speed: str = "max", stocks: int = 3000,
                   activity: float = 1.0, compression: str = "deflate", day: str = DAY) -> Iterator[dict]:
    """A replay server in a child process; yields its URLs (and `control`, its HTTP base)."""
    args = [sys.executable, "-m", "market_platform.replay.alpaca_stream", "--day", day,
            "--start", start.isoformat(), "--end", end.isoformat(), "--speed", speed, "--stocks", str(stocks),
            "--activity", str(activity), "--compression", compression]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        info = json.loads(proc.stdout.readline())
        info["control"] = info["url"].replace("ws://", "http://") + "/control"
        yield info
    finally:
        proc.terminate()
        proc.wait(10)


def replay_status(info: dict) -> dict:
    with urllib.request.urlopen(info["control"] + "/status", timeout=10) as response:
        return json.loads(response.read())


def window(start: str, minutes: float, day: str = DAY) -> tuple[datetime, datetime]:
    lo = ny(day, start)
    return lo, lo + timedelta(minutes=minutes)
