"""FlatFilesSource (boto3 underneath) against the Flat Files replay, and the three REST/file paths
agreeing bar for bar."""

from __future__ import annotations

from datetime import date, datetime

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from market_platform import calendar
from market_platform.errors import ConfigError, NotASessionError, VendorAuthError, VendorNotFoundError
from market_platform.schemas import BARS, Source
from market_platform.sources.flatfiles import FlatFilesSource, flatfile_key
from market_platform_tests.fixtures.replay import FAST_RETRY
from market_platform_tests.fixtures.sim import SIM_DAY, SIM_HALF_DAY

#: Columns every path carries (flat files have no VWAP).
COMMON = ["symbol", "ts", "open", "high", "low", "close", "volume", "trade_count"]


def listed_stocks(sim, day: date) -> list[str]:
    return sorted(s for c in ("us_equities", "etf", "otc") for s in sim.symbols(day, category=c))


def test_a_day_streams_into_arrow_exactly(replay, sim):
    source = replay.flatfiles_source(block_size=16 << 10)  # small blocks: several batches
    batches = list(source.iter_batches(SIM_DAY))
    assert len(batches) > 3 and all(b.schema == BARS for b in batches)
    table = pa.Table.from_batches(batches)
    expected = sim.minute_bars(SIM_DAY, listed_stocks(sim, SIM_DAY))
    assert table.select(COMMON).equals(expected.select(COMMON))  # float64 volumes, decimals exact
    assert table["vwap"].null_count == table.num_rows
    assert set(table["source"].to_pylist()) == {Source.POLYGON_FLATFILES.value}
    fractional = pc.not_equal(pc.floor(table["volume"]), table["volume"])
    assert pc.sum(fractional).as_py() > 100  # fractional shares survive the CSV round trip


def test_flat_files_and_both_rest_apis_give_identical_bars(replay, sim):
    symbols = listed_stocks(sim, SIM_HALF_DAY)
    flat = replay.flatfiles_source().minute_bars(SIM_HALF_DAY, symbols)
    polygon = replay.polygon_source(retry=FAST_RETRY).minute_bars(SIM_HALF_DAY, symbols)
    alpaca = replay.alpaca_source(retry=FAST_RETRY).minute_bars(SIM_HALF_DAY, symbols)
    assert flat.num_rows == sim.minute_bars(SIM_HALF_DAY, symbols).num_rows > 1000
    assert flat.select(COMMON).equals(polygon.select(COMMON))
    assert polygon.select(COMMON + ["vwap"]).equals(alpaca.select(COMMON + ["vwap"]))
    crypto = ["BTC/USD", "SOL/USD"]
    assert replay.flatfiles_source().minute_bars(SIM_DAY, crypto).select(COMMON).equals(
        replay.polygon_source().minute_bars(SIM_DAY, crypto).select(COMMON))


def test_day_files_match_vendor_daily_bars(replay):
    flat = replay.flatfiles_source().day_bars(SIM_DAY, ["AAPL", "SPY"])
    rest = replay.polygon_source().aggregates(SIM_DAY, ["AAPL", "SPY"], timeframe="1d")
    assert flat["ts"].to_pylist() == [datetime(2024, 11, 26, tzinfo=calendar.NEW_YORK)] * 2
    assert flat.select(COMMON).equals(rest.select(COMMON))


def test_exists_etag_and_missing_days(replay):
    source = replay.flatfiles_source()
    assert source.exists(SIM_DAY) and source.etag(SIM_DAY).startswith('"')
    after = date(2024, 12, 2)
    assert not source.exists(after) and source.etag(after) is None
    with pytest.raises(VendorNotFoundError, match=r"no flat file s3://flatfiles/us_stocks_sip/.*2024-12-02.*published"):
        source.minute_bars(after)
    with pytest.raises(NotASessionError, match="2024-11-28"):
        source.minute_bars(date(2024, 11, 28))
    assert source.exists(date(2024, 11, 28), market="crypto")
    assert flatfile_key(SIM_DAY, market="crypto", dataset="day_aggs_v1") == \
        "global_crypto/day_aggs_v1/2024/11/2024-11-26.csv.gz"


def test_denied_keys_are_clear_and_secret(replay):
    free = replay.flatfiles_source(access_key=replay.keys.s3_free_access_key, secret_key=replay.keys.s3_free_secret)
    with pytest.raises(VendorAuthError, match="plan does not include this dataset") as caught:
        free.minute_bars(SIM_DAY)
    assert replay.keys.s3_free_secret not in str(caught.value)
    with pytest.raises(VendorAuthError, match=r"refused .*\(403\)"):
        replay.flatfiles_source(access_key="nobody", secret_key="nothing").exists(SIM_DAY)
    with pytest.raises(ConfigError, match="POLYGON_S3_ACCESS_KEY"):
        FlatFilesSource.from_env({})


def test_republished_day_has_a_new_etag_and_every_server_serves_the_correction(replay, sim, corrected_day):
    day = corrected_day
    source = replay.flatfiles_source()
    before = source.read(day)
    corrections = replay.flatfiles.republish(day, symbols=["MSFT"], volume_delta=12.5)
    after = source.read(day)
    assert after.etag != before.etag and source.etag(day) == after.etag
    fixed = after.table.filter(pc.equal(after.table["symbol"], "MSFT")).slice(0, 1)
    original = before.table.filter(pc.equal(before.table["symbol"], "MSFT")).slice(0, 1)
    assert fixed["volume"][0].as_py() == original["volume"][0].as_py() + 12.5 == corrections["volume"][0].as_py()
    assert fixed["trade_count"][0].as_py() == original["trade_count"][0].as_py() + 1
    unchanged = pc.not_equal(after.table["symbol"], "MSFT")
    assert after.table.filter(unchanged).equals(before.table.filter(pc.not_equal(before.table["symbol"], "MSFT")))
    rest = replay.polygon_source().minute_bars(day, ["MSFT"])
    assert rest["volume"][0].as_py() == fixed["volume"][0].as_py()
    assert replay.alpaca_source().minute_bars(day, ["MSFT"])["volume"][0].as_py() == fixed["volume"][0].as_py()
    assert sim.minute_bars(day, ["MSFT"])["volume"][0].as_py() == original["volume"][0].as_py()  # the sim itself is untouched
