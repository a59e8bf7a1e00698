"""`market-platform stream` on bad input and on a failing database: one `error:` line, exit 2,
nothing written. Run in process (click's runner) against a real PostgreSQL."""

from __future__ import annotations

from typing import Callable

import pytest
from click.testing import CliRunner

from market_platform.cli import main
from market_platform.storage.timescale import TickStore
from market_platform_tests.fixtures.stream import db_rows

LIVE_KEYS = {"ALPACA_API_KEY": "live-key-id", "ALPACA_SECRET_KEY": "live-secret-key"}


def _stream(args: list[str], db_url: str, home, **env: str):
    environ = {"MARKET_DB_URL": db_url, "MARKET_PLATFORM_HOME": str(home), "MARKET_SIM_STOCKS": "20",
               "MARKET_SIM_ACTIVITY": "0.02", "ALPACA_API_KEY": "", "ALPACA_SECRET_KEY": "", "ALPACA_STREAM_URL": "",
               **env}
    return CliRunner().invoke(main, ["stream", *args], env=environ)


@pytest.mark.parametrize(("args", "env", "expected"), [
    (["--speed", "inf"], {}, "--speed 'inf': expected a positive number"),
    (["--speed", "nan"], {}, "--speed 'nan': expected a positive number"),
    (["--speed", "-5"], {}, "--speed '-5': expected a positive number"),
    (["--speed", "0"], {}, "--speed '0': expected a positive number"),
    (["--day", "2024-11-26"], LIVE_KEYS, "day 2024-11-26: a live Alpaca stream can only stream today's session"),
    (["--symbols", "AAPL';DROP TABLE quotes;--"], {}, "symbols \"AAPL';DROP TABLE quotes;--\": expected tickers"),
    (["--symbols", ""], {}, "no symbols: expected at least one ticker"),
    (["--crypto", "--symbols", "AAPL"], {}, "symbols 'AAPL': expected crypto pairs like BTC/USD"),
], ids=["speed-inf", "speed-nan", "speed-negative", "speed-zero", "live-past-day", "symbol-injection",
        "symbols-empty", "crypto-symbol"])
def test_bad_input_is_one_error_line_and_writes_nothing(make_database: Callable[[str], str], tmp_path, args, env,
                                                        expected) -> None:
    url = make_database("postgres")  # empty: no schema
    result = _stream(args, url, tmp_path / "home", **env)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert "live-secret-key" not in result.output + result.stderr
    assert db_rows(url, "SELECT count(*) AS n FROM pg_tables WHERE schemaname = 'public'")[0]["n"] == 0
    assert not (tmp_path / "home").exists() or not any((tmp_path / "home").iterdir())


def test_a_writer_that_the_database_stops_exits_2_with_one_line(stream_db, tmp_path) -> None:
    with TickStore(stream_db) as store, store.connect() as conn:
        conn.execute("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$ BEGIN RAISE EXCEPTION 'trades are read-only here'; END $$")
        conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON trades FOR EACH STATEMENT EXECUTE FUNCTION refuse()")
        conn.commit()
    result = _stream(["--day", "2024-11-26", "--start", "11:00", "--end", "11:02"], stream_db, tmp_path / "home")
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the tick store refused a write, so the stream stopped" in errors[0]
    assert "trades are read-only here" in errors[0] and "Traceback" not in result.stderr
    assert list((tmp_path / "home" / "spool" / "alpaca_stocks_iex").glob("*.entry"))  # kept for the next run
