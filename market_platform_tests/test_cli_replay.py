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
                "ALPACA_API_KEY", "ALPACA_SECRET_KEY"} <= set(exports), lines
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


def test_replay_server_rejects_a_backwards_range():
    result = subprocess.run([*CLI, "replay-server", "--from", "2024-11-29", "--to", "2024-11-25"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --from 2024-11-29 is after --to 2024-11-25"


@pytest.mark.parametrize("option", ["--from", "--to"])
def test_replay_server_rejects_a_bad_date(option):
    result = subprocess.run([*CLI, "replay-server", option, "2024-02-30"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "'2024-02-30' is not a date" in result.stderr
