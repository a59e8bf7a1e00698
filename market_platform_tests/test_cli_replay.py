"""`market-platform replay-server`: a real process that prints its URLs, serves, and stops on SIGINT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from market_platform.cli import main
from market_platform.streaming.runs import is_loopback

CLI = [sys.executable, "-m", "market_platform.cli"]


def start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([*CLI, "replay-server", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, start_new_session=True)


def test_replay_server_prints_urls_serves_and_stops(tmp_path: Path):
    process = start("--stocks", "5", "--crypto", "2", "--from", "2024-11-26", "--to", "2024-11-26",
                    "--rate-limit", "100")
    lines = []
    try:
        for line in process.stdout:
            lines.append(line.rstrip())
            if line.startswith("Ctrl-C"):
                break
        exports = dict(line[len("export "):].split("=", 1) for line in lines if line.startswith("export "))
        assert {"POLYGON_API_KEY", "POLYGON_BASE_URL", "POLYGON_S3_ENDPOINT", "ALPACA_DATA_URL",
                "ALPACA_API_KEY", "ALPACA_SECRET_KEY", "ALPACA_STREAM_URL", "ALPACA_TRADING_URL"} <= set(exports), lines
        # Every vendor address the platform reads is the replay's: the replay's keys never reach a
        # vendor. (The platform's own addresses, its database, lake, broker, are not the replay's to set.)
        urls = {name for name in settings_names()
                if name.startswith(("POLYGON_", "ALPACA_")) and name.endswith(("_URL", "_ENDPOINT"))}
        assert {"POLYGON_BASE_URL", "POLYGON_S3_ENDPOINT", "ALPACA_DATA_URL", "ALPACA_STREAM_URL",
                "ALPACA_TRADING_URL"} <= urls, urls
        assert urls <= set(exports) and all(is_loopback(exports[name]) for name in urls), (urls, exports)
        assert exports["ALPACA_STREAM_URL"].startswith("ws://127.0.0.1:") and \
            exports["ALPACA_STREAM_URL"].endswith(f"/v2/{exports['ALPACA_FEED']}")
        assert any(line.startswith("rate limit     100 calls per 60s") for line in lines)
        url = (f"{exports['POLYGON_BASE_URL']}/v2/aggs/ticker/AAPL/range/1/day/2024-11-26/2024-11-26"
               f"?apiKey={exports['POLYGON_API_KEY']}")
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        assert body["resultsCount"] == 1 and body["results"][0]["t"] == 1732597200000  # midnight New York
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def settings_names() -> set[str]:
    """Every environment variable named in market_platform.settings."""
    from market_platform import settings

    return {value for name, value in vars(settings).items() if name.endswith("_VAR") and isinstance(value, str)}


@pytest.mark.parametrize("args, fragment", [
    (["--polygon-port", "99999"], "--polygon-port 99999: expected a TCP port from 1 to 65535, or 0 for any free port"),
    (["--alpaca-port", "99999"], "--alpaca-port 99999: expected a TCP port"),
    (["--s3-port", "-1"], "--s3-port -1: expected a TCP port"),
    (["--stream-port", "65536"], "--stream-port 65536: expected a TCP port"),
    (["--to", "9999-12-31"], "--to 9999-12-31: expected a day from 2004-01-02 to the last completed session"),
    (["--from", "1990-01-02"], "--from 1990-01-02: expected a day from 2004-01-02"),
])
def test_replay_server_refuses_bad_input_in_one_line(args, fragment):
    result = CliRunner().invoke(main, ["replay-server", *args])
    assert result.exit_code == 2 and result.stdout == "", result.output
    assert result.stderr.startswith(f"error: {fragment}") and result.stderr.count("\n") == 1, result.stderr


def test_replay_server_rejects_a_backwards_range():
    result = subprocess.run([*CLI, "replay-server", "--from", "2024-11-29", "--to", "2024-11-25"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --from 2024-11-29 is after --to 2024-11-25"


@pytest.mark.parametrize("option", ["--from", "--to"])
def test_replay_server_rejects_a_bad_date(option):
    result = subprocess.run([*CLI, "replay-server", option, "2024-02-30"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "'2024-02-30' is not a date" in result.stderr
