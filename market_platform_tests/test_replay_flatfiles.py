"""The Flat Files replay: the vendor's S3 layout and CSV format, read with plain boto3."""

from __future__ import annotations

import gzip
import io
from datetime import date, datetime, time

import boto3
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from market_platform import calendar
from market_platform_tests.fixtures.sim import SIM_DAY

HEADER = "ticker,volume,open,close,high,low,window_start,transactions"


def s3(replay, key=None, secret=None):
    return boto3.session.Session().client(
        "s3", endpoint_url=replay.s3_endpoint, region_name="us-east-1",
        aws_access_key_id=key or replay.keys.s3_access_key, aws_secret_access_key=secret or replay.keys.s3_secret,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))


def keys(client, prefix: str) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket="flatfiles", Prefix=prefix).get("Contents", [])]


def read(client, key: str) -> tuple[str, pa.Table]:
    raw = gzip.decompress(client.get_object(Bucket="flatfiles", Key=key)["Body"].read())
    header = raw.split(b"\n", 1)[0].decode()
    table = pa_csv.read_csv(io.BytesIO(raw), convert_options=pa_csv.ConvertOptions(
        column_types={"ticker": pa.string(), "volume": pa.float64(), "window_start": pa.int64()}))
    return header, table


def test_one_file_per_session_and_per_crypto_day(replay):
    client = s3(replay)
    assert keys(client, "us_stocks_sip/minute_aggs_v1/2024/11/") == [
        f"us_stocks_sip/minute_aggs_v1/2024/11/2024-11-{d}.csv.gz" for d in ("25", "26", "27", "29")]
    assert len(keys(client, "us_stocks_sip/day_aggs_v1/2024/11/")) == 4
    assert keys(client, "global_crypto/minute_aggs_v1/2024/11/")[-1].endswith("2024-11-29.csv.gz")
    assert len(keys(client, "global_crypto/minute_aggs_v1/")) == 5  # Thanksgiving too: crypto trades


def test_minute_file_is_the_whole_market_in_vendor_format(replay, sim):
    header, table = read(s3(replay), "us_stocks_sip/minute_aggs_v1/2024/11/2024-11-26.csv.gz")
    assert header == HEADER
    listed = sorted(s for c in ("us_equities", "etf", "otc") for s in sim.symbols(SIM_DAY, category=c))
    expected = sim.minute_bars(SIM_DAY, listed)
    assert table["ticker"].to_pylist() == expected["symbol"].to_pylist()  # sorted by ticker
    assert table["window_start"].to_pylist() == pc.cast(expected["ts"], pa.int64()).to_pylist()  # ns
    for column in ("volume", "open", "close", "high", "low"):
        assert table[column].to_pylist() == expected[column].to_pylist()  # exact, decimals included
    assert table["transactions"].to_pylist() == expected["trade_count"].to_pylist()
    assert pc.any(pc.not_equal(pc.floor(table["volume"]), table["volume"])).as_py()  # fractional shares


def test_crypto_and_day_files(replay, sim):
    client = s3(replay)
    _, crypto = read(client, "global_crypto/minute_aggs_v1/2024/11/2024-11-26.csv.gz")
    assert set(crypto["ticker"].to_pylist()) == {"X:" + s.replace("/", "-") for s in sim.symbols(SIM_DAY, category="crypto")}
    header, daily = read(client, "us_stocks_sip/day_aggs_v1/2024/11/2024-11-26.csv.gz")
    assert header == HEADER
    midnight = int(datetime.combine(SIM_DAY, time(), tzinfo=calendar.NEW_YORK).timestamp()) * 10**9
    assert set(daily["window_start"].to_pylist()) == {midnight}
    aapl = daily.filter(pc.equal(daily["ticker"], "AAPL"))
    assert aapl["volume"][0].as_py() == pytest.approx(pc.sum(sim.minute_bars(SIM_DAY, ["AAPL"])["volume"]).as_py(),
                                                      rel=1e-12)


def test_keys_and_entitlements(replay):
    key = "us_stocks_sip/minute_aggs_v1/2024/11/2024-11-26.csv.gz"
    free = s3(replay, replay.keys.s3_free_access_key, replay.keys.s3_free_secret)
    assert key in keys(free, "us_stocks_sip/")  # listing works for every prefix...
    with pytest.raises(ClientError) as denied:
        free.get_object(Bucket="flatfiles", Key=key)  # ...but not the files
    assert denied.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(ClientError) as unknown:
        s3(replay, "nobody", "nothing").get_object(Bucket="flatfiles", Key=key)
    assert unknown.value.response["Error"]["Code"] == "InvalidAccessKeyId"
    with pytest.raises(ClientError) as missing:
        s3(replay).get_object(Bucket="flatfiles", Key=key.replace("26", "28"))
    assert missing.value.response["Error"]["Code"] == "NoSuchKey"
    assert [e.status for e in replay.flatfiles.log.entries("/flatfiles/us_stocks_sip")][-3:] == [403, 403, 404]


def test_holiday_has_no_stock_file(replay):
    assert not calendar.is_session(date(2024, 11, 28))
    assert keys(s3(replay), "us_stocks_sip/minute_aggs_v1/2024/11/2024-11-28") == []


def test_a_second_replay_of_the_same_bucket_is_refused_and_leaves_the_first_serving(replay, sim):
    from market_platform.errors import ConfigError
    from market_platform.replay import ReplayServers, SimProvider

    client = s3(replay)
    before = keys(client, "us_stocks_sip/minute_aggs_v1/2024/11/")
    with pytest.raises(ConfigError, match="bucket 'flatfiles' already exists"):
        ReplayServers(SimProvider(sim)).start()
    assert before and keys(client, "us_stocks_sip/minute_aggs_v1/2024/11/") == before
