"""What a user sees when a command's run cannot work: seconds to the error, lines on stderr, the exit
status, whether a traceback shows. Prints one JSON object.

Two cases of issue 11, each the real `market-platform` command in a fresh home:

- `unreachable_db`: `discover us_equities` with MARKET_DB_URL at a closed port (was ~20 s of
  retries, three tracebacks, exit 1);
- `rejected_key`: `discover us_equities` against the replay servers with a Polygon key they reject,
  the run failing inside Dagster (was 100-200 lines of step tracebacks before the `error:` line).

    python benchmarks/cli_errors.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [str(Path(sys.executable).parent / "market-platform")]


def attempt(args: list[str], env: dict[str, str]) -> dict:
    started = time.monotonic()
    result = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=600)
    return {
        "seconds": round(time.monotonic() - started, 2),
        "exit_status": result.returncode,
        "stderr_lines": len(result.stderr.splitlines()),
        "error_lines": sum(1 for line in result.stderr.splitlines() if line.startswith("error: ")),
        "traceback": "Traceback" in result.stderr,
    }


def main() -> None:
    from market_platform.replay import ReplayServers
    from market_platform.sources.sim import SimMarket
    from market_platform.storage.timescale import stop_embedded

    base = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "POLYGON_", "MARKET_", "DAGSTER_"))}
    figures = {}
    with tempfile.TemporaryDirectory(prefix="cli_errors_") as tmp:
        home = Path(tmp) / "home"
        env = {**base, "MARKET_PLATFORM_HOME": str(home)}
        figures["unreachable_db"] = attempt(
            ["discover", "us_equities"], {**env, "MARKET_DB_URL": "postgresql://postgres@127.0.0.1:1/market"})
        try:
            with ReplayServers(sim=SimMarket(n_stocks=20)) as servers:
                replay = {**servers.env(rates=True), "POLYGON_API_KEY": "a-key-the-vendor-rejects"}
                figures["rejected_key"] = attempt(["discover", "us_equities"], {**env, **replay})
        finally:
            stop_embedded(home)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
