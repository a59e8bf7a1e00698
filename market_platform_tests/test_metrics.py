"""Daily and intraday metrics against an independent pandas computation; probability of profit on
hand-made windows; the tick store's SQL path against the lake's."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from market_platform import calendar, schemas
from market_platform.analytics import metrics
from market_platform.errors import PartitionNotFoundError
from market_platform.storage.lake import Lake
from market_platform_tests.fixtures.metrics import GAPPY, METRICS_DAYS

HALF_DAY = date(2024, 11, 29)
FULL_DAY = date(2024, 11, 26)


def _bars(lake: Lake, day: date) -> pd.DataFrame:
    df = lake.read_partition("minute_bars", day).to_pandas()
    df = df.sort_values(["symbol", "ts", "source"]).drop_duplicates(["symbol", "ts"], keep="first")
    df["px"] = df["vwap"].fillna((df["high"] + df["low"] + df["close"]) / 3)
    return df.reset_index(drop=True)


def _log_returns(df: pd.DataFrame) -> pd.Series:
    previous = df.groupby("symbol")["close"].shift(1).fillna(df["open"])
    return np.log(df["close"] / previous)


def pandas_daily(lake: Lake, day: date) -> pd.DataFrame:
    """The daily metrics, computed the slow obvious way."""
    session = calendar.session(day)
    df = _bars(lake, day)
    df = df[(df.ts >= session.start) & (df.ts < session.end)]
    regular = df[(df.ts >= session.regular_open) & (df.ts < session.regular_close)].copy()
    regular["r"] = _log_returns(regular)
    g = regular.groupby("symbol")
    out = pd.DataFrame({
        "open": g["open"].first(), "high": g["high"].max(), "low": g["low"].min(), "close": g["close"].last(),
        "vwap": g.apply(lambda x: (x.px * x.volume).sum() / x.volume.sum(), include_groups=False),
        "realized_vol": g["r"].apply(lambda r: np.sqrt((r**2).sum())),
    })
    whole = df.groupby("symbol")
    out = out.reindex(whole.size().index)
    out["volume"] = whole["volume"].sum()
    out["dollar_volume"] = whole.apply(lambda x: (x.px * x.volume).sum(), include_groups=False)
    out["bars"] = whole.size()
    pre = df[df.ts < session.regular_open].groupby("symbol")["volume"].sum()
    post = df[df.ts >= session.regular_close].groupby("symbol")["volume"].sum()
    out["premarket_volume_share"] = (pre.reindex(out.index).fillna(0) / out["volume"])
    out["afterhours_volume_share"] = (post.reindex(out.index).fillna(0) / out["volume"])
    previous = calendar.session(calendar.default_calendar().previous_session(day))
    if lake.has_partition("minute_bars", previous.day):
        p = _bars(lake, previous.day)
        p = p[(p.ts >= previous.regular_open) & (p.ts < previous.regular_close)]
        out["prev_close"] = p.groupby("symbol")["close"].last().reindex(out.index)
    else:
        out["prev_close"] = np.nan
    out["pct_change"] = out["close"] / out["prev_close"] - 1
    out["gap"] = out["open"] / out["prev_close"] - 1
    out["open_close_return"] = out["close"] / out["open"] - 1
    out["log_return"] = np.log(out["close"] / out["open"])
    out["price_range"] = out["high"] - out["low"]
    out["range_pct"] = out["price_range"] / out["open"]
    return out


@pytest.mark.parametrize("day", [FULL_DAY, HALF_DAY], ids=["full_day", "half_day"])
def test_daily_metrics_match_pandas(metrics_lake, day):
    got = metrics.daily_metrics(metrics_lake, day).to_pandas().set_index("symbol")
    want = pandas_daily(metrics_lake, day)
    assert sorted(got.index) == sorted(want.index)
    assert GAPPY in got.index
    for column in want.columns:
        np.testing.assert_allclose(got.loc[want.index, column].astype(float), want[column].astype(float),
                                   rtol=1e-9, atol=1e-12, err_msg=column)
    assert got["half_day"].all() == (day == HALF_DAY)
    assert got["prev_close"].notna().all()
    expected_ts = datetime(day.year, day.month, day.day, tzinfo=calendar.NEW_YORK)
    assert (got["ts"] == pd.Timestamp(expected_ts)).all()


def test_half_day_phases_come_from_the_calendar(metrics_lake):
    """On 2024-11-29 the regular session ends at 13:00: bars from 13:00 on are after-hours volume."""
    got = metrics.daily_metrics(metrics_lake, HALF_DAY).to_pandas().set_index("symbol")
    bars = _bars(metrics_lake, HALF_DAY)
    close_1300 = datetime(2024, 11, 29, 18, 0, tzinfo=timezone.utc)
    aapl = bars[bars.symbol == "AAPL"]
    assert aapl.ts.max() > close_1300  # the sim trades after-hours until 17:00
    assert got.loc["AAPL", "close"] == aapl[aapl.ts < close_1300].close.iloc[-1]
    share = aapl[aapl.ts >= close_1300].volume.sum() / aapl.volume.sum()
    assert got.loc["AAPL", "afterhours_volume_share"] == pytest.approx(share)


def test_first_session_has_no_previous_close(metrics_lake):
    got = metrics.daily_metrics(metrics_lake, METRICS_DAYS[0])
    assert got["prev_close"].null_count == got.num_rows
    assert got["pct_change"].null_count == got.num_rows
    assert got["open_close_return"].null_count == 0


def test_daily_metrics_need_the_partition(metrics_lake):
    with pytest.raises(PartitionNotFoundError, match="2024-12-02"):
        metrics.daily_metrics(metrics_lake, "2024-12-02")


def pandas_intraday(lake: Lake, day: date) -> pd.DataFrame:
    session = calendar.session(day)
    df = _bars(lake, day)
    df = df[(df.ts >= session.start) & (df.ts < session.end)].copy()
    df["r"] = _log_returns(df)
    df["window"] = df.ts.dt.floor("5min")
    rows = []
    for (symbol, window), w in df.groupby(["symbol", "window"], sort=True):
        latest = w.close.iloc[-1]
        rows.append({
            "symbol": symbol, "ts": window, "open": w.open.iloc[0], "high": w.high.max(), "low": w.low.min(),
            "close": latest, "volume": w.volume.sum(), "vwap": (w.px * w.volume).sum() / w.volume.sum(),
            "trade_count": w.trade_count.sum(), "observations": len(w), "volatility": np.sqrt((w.r**2).sum()),
            "probability_of_profit": (w.close <= latest).sum() / len(w),
        })
    out = pd.DataFrame(rows)
    previous = out.groupby("symbol")["close"].shift(1).fillna(out["open"])
    out["pct_change"] = out["close"] / previous - 1
    out["phase"] = np.where(out.ts < session.regular_open, "premarket",
                            np.where(out.ts < session.regular_close, "regular", "afterhours"))
    return out


@pytest.mark.parametrize("day", [FULL_DAY, HALF_DAY], ids=["full_day", "half_day"])
def test_intraday_metrics_match_pandas(metrics_lake, day):
    got = metrics.intraday_metrics(metrics_lake, day).to_pandas()
    want = pandas_intraday(metrics_lake, day)
    assert len(got) == len(want)
    assert list(got.symbol) == list(want.symbol) and (got.ts.values == want.ts.values).all()
    assert list(got.phase) == list(want.phase)
    for column in ("open", "high", "low", "close", "volume", "vwap", "trade_count", "observations",
                   "volatility", "probability_of_profit", "pct_change"):
        np.testing.assert_allclose(got[column].astype(float), want[column].astype(float), rtol=1e-9, atol=1e-12,
                                   err_msg=column)
    assert (got[got.symbol == GAPPY].observations < 5).any()


def _minute_bars(closes: list[float], *, symbol: str = "TEST", start: datetime) -> pa.Table:
    n = len(closes)
    ts = [start + timedelta(minutes=i) for i in range(n)]
    return schemas.conform(pa.table({
        "symbol": [symbol] * n, "ts": ts, "open": closes, "high": closes, "low": closes, "close": closes,
        "volume": [100.0] * n, "vwap": closes, "trade_count": [1] * n, "source": ["sim"] * n,
    }), schemas.BARS)


@pytest.mark.parametrize(
    "closes, expected",
    [
        ([10.0, 10.5, 10.2, 10.8, 10.6], 4 / 5),  # latest 10.6 is above 10.0, 10.5, 10.2 and itself
        ([10.0], 1.0),  # one observation: trivially at break-even
        ([10.0, 10.0, 10.0, 10.0, 10.0], 1.0),  # flat window: every entry breaks even
        ([11.0, 12.0, 13.0, 14.0, 10.0], 1 / 5),  # latest is the low: only itself
        ([10.0, 11.0, 10.5, 11.0], 1.0),  # tie with an earlier close counts as break-even
        ([12.0, 10.0, 11.0, 10.0, 11.0], 4 / 5),  # ties below and at the latest
    ],
    ids=["mixed", "one_observation", "flat", "latest_lowest", "tie_at_high", "ties"],
)
def test_probability_of_profit_on_hand_made_windows(tmp_path, closes, expected):
    day = FULL_DAY
    window = calendar.session(day).regular_open + timedelta(minutes=30)
    lake = Lake(tmp_path / "lake")
    lake.write_partition("minute_bars", day, _minute_bars(closes, start=window))
    got = metrics.intraday_metrics(lake, day)
    assert got.num_rows == 1
    row = got.to_pylist()[0]
    assert row["observations"] == len(closes)
    assert row["probability_of_profit"] == pytest.approx(expected)
    assert row["ts"] == window
    assert row["pct_change"] == pytest.approx(closes[-1] / closes[0] - 1)


def test_live_intraday_metrics_match_the_lake(tick_store, metrics_lake):
    """The PostgreSQL path over bars_1m gives the lake's rows, column for column; `until` cuts it."""
    day = FULL_DAY
    tick_store.write_bars(metrics_lake.read_partition("minute_bars", day))
    lake_rows = metrics.intraday_metrics(metrics_lake, day)
    live = metrics.live_intraday_metrics(tick_store, day)
    assert live.schema.equals(lake_rows.schema)
    assert live.num_rows == lake_rows.num_rows
    a, b = live.to_pandas(), lake_rows.to_pandas()
    assert (a.symbol == b.symbol).all() and (a.ts == b.ts).all() and (a.phase == b.phase).all()
    for column in ("open", "close", "pct_change", "vwap", "volume", "volatility", "probability_of_profit"):
        np.testing.assert_allclose(a[column], b[column], rtol=1e-9, err_msg=column)

    noon = datetime(2024, 11, 26, 17, 0, tzinfo=timezone.utc)
    partial = metrics.live_intraday_metrics(tick_store, day, until=noon, symbols=["AAPL"])
    assert set(partial["symbol"].to_pylist()) == {"AAPL"}
    assert max(partial["ts"].to_pylist()) < noon


def test_movers(metrics_lake):
    table = metrics.daily_metrics(metrics_lake, HALF_DAY)
    gainers, losers = metrics.movers(table, n=3)
    changes = table.to_pandas().set_index("symbol")["pct_change"]
    assert gainers["symbol"].to_pylist() == list(changes.sort_values(ascending=False).index[:3])
    assert losers["symbol"].to_pylist() == list(changes.sort_values().index[:3])
