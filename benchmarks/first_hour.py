"""A new user's first commands, timed, in a fresh home: `market-platform demo` (what `make demo`
runs after the install), then `discover top3000`, then a 2-ticker, 5-session backfill (AAPL and
MSFT, the five sessions before the demo's recent ones, from REST), each as the user types it
(no MARKET_SIM_* set); then `discover top3000` at full scale (MARKET_SIM_STOCKS=3000: 20 sessions
of the whole market's day files). Prints one JSON object: each command's wall and CPU seconds
(its processes' user + system time: the machine is shared), exit status, lines of output, and
the noise in them (Dagster's Beta/Preview warnings, embedded-PostgreSQL internals, tracebacks).

    python benchmarks/first_hour.py [--stocks 100] [--no-stream] [--code PATH]

`--code` runs the commands on another checkout's package (PYTHONPATH), e.g. an export of main,
for before/after figures on the same machine and venv.

Issue 11 measured 151 s (demo), 256 s (discover top3000) and 92 s (the backfill) on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

CLI = [str(Path(sys.executable).parent / "market-platform")]
NOISE = ("BetaWarning", "PreviewWarning", "PG_VERSION", "postmaster_info", "remaining pids", "Traceback")


def timed(args: list[str], env: dict[str, str]) -> dict:
    started, cpu = time.monotonic(), os.times()
    result = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=1800)
    after = os.times()
    output = result.stdout + result.stderr
    figures = {
        "seconds": round(time.monotonic() - started, 1),
        "cpu_seconds": round(after.children_user + after.children_system - cpu.children_user - cpu.children_system, 1),
        "exit_status": result.returncode,
        "lines": len(output.splitlines()),
        "noise": {word: output.count(word) for word in NOISE if word in output},
    }
    if result.returncode:
        figures["stderr_tail"] = result.stderr.splitlines()[-5:]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stocks", type=int, default=100, help="the demo's --stocks (its default: 100)")
    parser.add_argument("--no-stream", action="store_true", help="the demo without its streamed session")
    parser.add_argument("--code", help="a checkout whose market_platform package the commands run")
    args = parser.parse_args()

    from market_platform import calendar
    from market_platform.storage.timescale import stop_embedded

    base = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "POLYGON_", "MARKET_", "DAGSTER_"))}
    last = calendar.default_calendar().last_completed_session(datetime.now(timezone.utc))
    backfill_days = calendar.sessions(calendar.CALENDAR_START, last)[-10:-5]
    figures: dict = {"stocks": args.stocks}
    with tempfile.TemporaryDirectory(prefix="first_hour_") as tmp:
        home = Path(tmp) / "home"
        env = {**base, "MARKET_PLATFORM_HOME": str(home), "COLUMNS": "120",
               **({"PYTHONPATH": str(Path(args.code).resolve())} if args.code else {})}
        try:
            figures["demo"] = timed(["demo", f"--stocks={args.stocks}",
                                     *(["--no-stream"] if args.no_stream else [])], env)
            figures["discover_top3000"] = timed(["discover", "top3000"], env)
            figures["backfill_2_tickers_5_sessions"] = timed(
                ["backfill", "--from", backfill_days[0].isoformat(), "--to", backfill_days[-1].isoformat(),
                 "--tickers", "AAPL,MSFT"], env)
            figures["discover_top3000_full_scale"] = timed(["discover", "top3000", "--replace"],
                                                          {**env, "MARKET_SIM_STOCKS": "3000"})
        finally:
            stop_embedded(home)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
