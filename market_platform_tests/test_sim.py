import hashlib
import os
import pickle
import re
import subprocess
import sys
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from market_platform import calendar
from market_platform.errors import InvalidInputError, NotASessionError
from market_platform.schemas import BARS, CATEGORIES, QUOTES, TRADES, UNIVERSE, quote_seq
from market_platform.sources.sim import SimMarket
from market_platform_tests.fixtures.sim import SIM_DAY, SIM_HALF_DAY, small_sim

UTC = timezone.utc
NY = calendar.NEW_YORK
SATURDAY = date(2024, 11, 30)


def _only(table: pa.Table, symbol: str) -> pa.Table:
    return table.filter(pc.equal(table.column("symbol"), symbol)).combine_chunks()


def _stream(batches) -> pa.Table:
    return pa.Table.from_batches(list(batches)).combine_chunks()


def _ny(day: date, hh: int, mm: int = 0) -> datetime:
    return datetime.combine(day, time(hh, mm), tzinfo=NY)


# --------------------------------------------------------------------------- determinism


def test_same_inputs_give_identical_tables(sim):
    other = small_sim()
    assert other.minute_bars(SIM_DAY).equals(sim.minute_bars(SIM_DAY))
    assert other.trades(SIM_DAY).equals(sim.trades(SIM_DAY))
    assert other.quotes(SIM_DAY, ["AAPL", "SPY"]).equals(sim.quotes(SIM_DAY, ["AAPL", "SPY"]))
    assert other.daily_bars(SATURDAY, ["BTC/USD"]).equals(sim.daily_bars(SATURDAY, ["BTC/USD"]))


def _digest(table: pa.Table) -> str:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def test_another_process_generates_the_same_bytes(sim):
    script = (
        "import sys; from market_platform_tests.test_sim import _digest; "
        "from market_platform_tests.fixtures.sim import small_sim, SIM_DAY; "
        "sim = small_sim(); sys.stdout.write(_digest(sim.minute_bars(SIM_DAY, ['AAPL', 'BTC/USD'])) + ' ' "
        "+ _digest(sim.quotes(SIM_DAY, ['TSLA'])))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # a different str-hash salt changes nothing
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True, cwd=repo)
    here = f"{_digest(sim.minute_bars(SIM_DAY, ['AAPL', 'BTC/USD']))} {_digest(sim.quotes(SIM_DAY, ['TSLA']))}"
    assert out.stdout == here


def test_a_pickled_market_is_the_same_market(sim):
    copy = pickle.loads(pickle.dumps(sim))
    assert repr(copy) == repr(sim) and len(pickle.dumps(sim)) < 200
    assert copy.minute_bars(SIM_DAY, ["NVDA"]).equals(sim.minute_bars(SIM_DAY, ["NVDA"]))


def test_a_seed_changes_the_data(sim):
    other = small_sim(seed=8)
    assert not other.minute_bars(SIM_DAY, ["AAPL"]).equals(sim.minute_bars(SIM_DAY, ["AAPL"]))


def test_a_symbols_data_does_not_depend_on_other_symbols_or_scale(sim):
    full_scale = SimMarket(7, n_stocks=3000, n_crypto=20, activity=0.02)
    everything = sim.minute_bars(SIM_DAY)
    for symbol in ("MSFT", "SPY"):
        alone = full_scale.minute_bars(SIM_DAY, [symbol])
        assert alone.num_rows > 100
        assert alone.equals(_only(everything, symbol))
        assert _only(full_scale.trades(SIM_DAY, [symbol, "XOM"]), symbol).equals(_only(sim.trades(SIM_DAY), symbol))
        assert full_scale.quotes(SIM_DAY, [symbol]).equals(_only(sim.quotes(SIM_DAY, ["AAPL", symbol]), symbol))
    crypto = full_scale.minute_bars(SATURDAY, ["ETH/USD"])
    assert crypto.equals(_only(sim.minute_bars(SATURDAY, ["BTC/USD", "ETH/USD"]), "ETH/USD"))


def test_streaming_an_hour_gives_the_same_rows_as_the_whole_day(sim):
    start, end = _ny(SIM_DAY, 9, 30), _ny(SIM_DAY, 10, 30)
    day = _stream(sim.iter_quotes(SIM_DAY))
    ts = day.column("ts")
    bound = [pa.scalar(t.astimezone(UTC), ts.type) for t in (start, end)]
    in_hour = day.filter(pc.and_(pc.greater_equal(ts, bound[0]), pc.less(ts, bound[1])))
    hour = _stream(sim.iter_quotes(SIM_DAY, start=start, end=end, batch_size=5000))
    assert hour.num_rows > 10_000
    assert hour.equals(in_hour)
    trades_hour = _stream(sim.iter_trades(SIM_DAY, start=start, end=end))
    assert trades_hour.sort_by([("symbol", "ascending"), ("ts", "ascending")]).equals(
        sim.trades(SIM_DAY, start=start, end=end))


def test_a_stream_of_hundreds_of_symbols_matches_each_symbol_alone():
    wide = small_sim(n_stocks=600, activity=0.002)  # the day's skeleton is built in pieces
    symbols = wide.stock_symbols(SIM_DAY)
    quotes = _stream(wide.iter_quotes(SIM_DAY))
    assert quotes.num_rows == wide.expected_quote_count(SIM_DAY)
    trades = _stream(wide.iter_trades(SIM_DAY))
    for symbol in (symbols[0], symbols[300], symbols[-1]):
        assert wide.quotes(SIM_DAY, [symbol]).equals(_only(quotes, symbol))
        assert wide.trades(SIM_DAY, [symbol]).equals(_only(trades, symbol))


def test_iter_trades_yields_the_trades_in_time_order(sim):
    streamed = _stream(sim.iter_trades(SIM_DAY, batch_size=4096))
    ts = streamed.column("ts").to_numpy().astype(np.int64)
    assert (np.diff(ts) >= 0).all()
    table = sim.trades(SIM_DAY)
    order = [("symbol", "ascending"), ("ts", "ascending"), ("trade_id", "ascending")]
    assert streamed.sort_by(order).equals(table.sort_by(order))


# --------------------------------------------------------------------------- bars are the trades


def _pandas_bars(trades: pa.Table) -> pd.DataFrame:
    df = trades.to_pandas()
    df["minute"] = df["ts"].dt.floor("min")
    df["notional"] = df["price"] * df["size"]
    g = df.groupby(["symbol", "minute"], sort=True)
    out = pd.DataFrame({
        "open": g["price"].first(), "high": g["price"].max(), "low": g["price"].min(),
        "close": g["price"].last(), "volume": g["size"].sum(), "trade_count": g.size(),
        "notional": g["notional"].sum(),
    })
    out["vwap"] = out["notional"] / out["volume"]
    return out


@pytest.mark.parametrize("day, symbols", [(SIM_DAY, None), (SIM_HALF_DAY, None), (SATURDAY, ["BTC/USD", "SOL/USD"])])
def test_bars_aggregate_the_trades_exactly(sim, day, symbols):
    bars = sim.minute_bars(day, symbols)
    assert bars.schema == BARS
    expected = _pandas_bars(sim.trades(day, symbols))
    got = bars.to_pandas().set_index(["symbol", "ts"])
    assert len(got) == len(expected) == sim.expected_bar_count(day, symbols) > 1000
    assert got.index.tolist() == expected.index.tolist()
    for column in ("open", "high", "low", "close", "trade_count"):
        assert (got[column].to_numpy() == expected[column].to_numpy()).all(), column
    # Stock sizes are multiples of 1/8 share, so their sums are exact in any order; crypto sizes
    # (1e-8 units) and every VWAP are sums of rounded products: equal to 1e-9 relative.
    exact_volume = symbols is None
    if exact_volume:
        assert (got["volume"].to_numpy() == expected["volume"].to_numpy()).all()
    np.testing.assert_allclose(got["volume"], expected["volume"], rtol=1e-9)
    np.testing.assert_allclose(got["vwap"], expected["vwap"], rtol=1e-9)


def test_daily_bars_aggregate_the_minute_bars(sim):
    minute = sim.minute_bars(SIM_DAY).to_pandas()
    daily = sim.daily_bars(SIM_DAY)
    assert daily.schema == BARS
    daily = daily.to_pandas().set_index("symbol")
    g = minute.groupby("symbol")
    assert list(daily.index) == sorted(sim.stock_symbols(SIM_DAY))
    assert (daily["open"] == g["open"].first()).all() and (daily["close"] == g["close"].last()).all()
    assert (daily["high"] == g["high"].max()).all() and (daily["low"] == g["low"].min()).all()
    assert (daily["trade_count"] == g["trade_count"].sum()).all()
    np.testing.assert_allclose(daily["volume"], g["volume"].sum(), rtol=1e-12)
    np.testing.assert_allclose(daily["vwap"], (g.apply(lambda d: (d.vwap * d.volume).sum() / d.volume.sum())),
                               rtol=1e-9)
    midnight = pd.Timestamp(datetime.combine(SIM_DAY, time(0), tzinfo=NY))
    assert (daily["ts"] == midnight).all()
    crypto = sim.daily_bars(SATURDAY, ["BTC/USD"]).to_pylist()[0]
    assert crypto["ts"] == datetime(2024, 11, 30, tzinfo=UTC)


# --------------------------------------------------------------------------- sessions


@pytest.mark.parametrize("day", [SIM_DAY, SIM_HALF_DAY, date(2024, 3, 11)])
def test_no_data_outside_session_hours(sim, day):
    session = calendar.session(day)
    for table in (sim.minute_bars(day), sim.trades(day), _stream(sim.iter_quotes(day))):
        ts = table.column("ts")
        assert pc.min(ts).as_py() >= session.start
        assert pc.max(ts).as_py() < session.end
    # Each symbol's day opens with a quote in the session's first microsecond.
    quotes = sim.quotes(day).to_pandas()
    first = quotes.groupby("symbol")["ts"].min()
    assert len(first) == 20 and (first >= session.start).all()
    assert (first < pd.Timestamp(session.start) + pd.Timedelta(microseconds=1)).all()


def test_half_day_closes_at_13_and_after_hours_end_at_17(sim):
    trades = sim.trades(SIM_HALF_DAY).to_pandas()
    local = trades["ts"].dt.tz_convert(NY)
    assert local.max() < pd.Timestamp(_ny(SIM_HALF_DAY, 17))
    after_hours = trades[local >= pd.Timestamp(_ny(SIM_HALF_DAY, 13))]
    assert len(after_hours) > 100
    assert after_hours["conditions"].str.contains("T").all()  # Form T: extended hours
    regular = trades[(local >= pd.Timestamp(_ny(SIM_HALF_DAY, 9, 30))) & (local < pd.Timestamp(_ny(SIM_HALF_DAY, 13)))]
    assert not regular["conditions"].str.contains("T").any()
    # The closing rush comes before 13:00, not 16:00.
    per_minute = regular.groupby(regular["ts"].dt.floor("min")).size()
    last_10 = per_minute[per_minute.index >= pd.Timestamp(_ny(SIM_HALF_DAY, 12, 50))].mean()
    midday = per_minute[(per_minute.index >= pd.Timestamp(_ny(SIM_HALF_DAY, 11, 30)))
                        & (per_minute.index < pd.Timestamp(_ny(SIM_HALF_DAY, 12, 0)))].mean()
    assert last_10 > 1.8 * midday
    assert sim.expected_quote_count(SIM_HALF_DAY) < 0.85 * sim.expected_quote_count(SIM_DAY)


def test_intraday_activity_is_u_shaped_with_thin_extended_hours(sim):
    trades = sim.trades(SIM_DAY).to_pandas()
    minute = trades.groupby(trades["ts"].dt.tz_convert(NY).dt.floor("min")).size()

    def rate(h0, m0, h1, m1):
        window = minute[(minute.index >= pd.Timestamp(_ny(SIM_DAY, h0, m0)))
                        & (minute.index < pd.Timestamp(_ny(SIM_DAY, h1, m1)))]
        return window.sum() / ((h1 * 60 + m1) - (h0 * 60 + m0))

    open_, midday, close = rate(9, 30, 10, 0), rate(12, 0, 14, 0), rate(15, 30, 16, 0)
    assert open_ > 2 * midday and close > 1.5 * midday
    assert rate(4, 0, 8, 0) < 0.1 * midday and rate(17, 0, 20, 0) < 0.1 * midday


def test_a_stock_request_on_a_non_session_raises(sim):
    with pytest.raises(NotASessionError, match="2024-11-28"):
        sim.minute_bars(date(2024, 11, 28))
    with pytest.raises(NotASessionError, match="weekend"):
        sim.trades(SATURDAY, ["AAPL"])
    with pytest.raises(NotASessionError):
        sim.iter_quotes(SATURDAY)


def test_crypto_trades_around_the_clock_on_utc_days(sim):
    bars = sim.minute_bars(SATURDAY, ["BTC/USD"]).to_pandas()
    assert bars["ts"].min() >= pd.Timestamp("2024-11-30T00:00Z")
    assert bars["ts"].max() < pd.Timestamp("2024-12-01T00:00Z")
    assert bars["ts"].dt.hour.nunique() == 24
    trades = sim.trades(SATURDAY, ["BTC/USD"]).to_pandas()
    assert (trades["exchange"] == "").all() and trades["conditions"].isna().all() and trades["tape"].isna().all()
    assert (trades["size"] != trades["size"].round()).mean() > 0.9  # fractional coins
    quotes = sim.quotes(SATURDAY, ["BTC/USD"]).to_pandas()
    assert (quotes["bid_price"] < quotes["ask_price"]).all() and quotes["bid_exchange"].isna().all()


# --------------------------------------------------------------------------- counts


def test_the_quote_stream_has_exactly_the_expected_count(sim):
    for day, symbols in ((SIM_DAY, None), (SIM_HALF_DAY, ["AAPL", "XOM"]), (SATURDAY, ["BTC/USD", "ETH/USD"])):
        streamed = sum(batch.num_rows for batch in sim.iter_quotes(day, symbols, batch_size=10_000))
        assert streamed == sim.expected_quote_count(day, symbols) > 1000
    assert sim.expected_trade_count(SIM_DAY) == sim.trades(SIM_DAY).num_rows


def test_full_scale_session_has_about_80m_quotes_and_700k_bars():
    full = SimMarket()
    quotes = full.expected_quote_count(SIM_DAY)
    assert 65e6 < quotes < 95e6
    bars = full.minute_bars(SIM_DAY)  # vectorised: seconds, not minutes
    assert 550_000 < bars.num_rows < 850_000
    assert bars.num_rows == full.expected_bar_count(SIM_DAY)
    assert len(full.stock_symbols(SIM_DAY)) == 3000
    assert 2e6 < full.expected_trade_count(SIM_DAY) < 20e6


def test_activity_scales_message_rates():
    low, high = small_sim(activity=0.01), small_sim(activity=0.04)
    assert 3.5 < high.expected_trade_count(SIM_DAY) / low.expected_trade_count(SIM_DAY) < 4.5
    assert 3.5 < high.expected_quote_count(SIM_DAY) / low.expected_quote_count(SIM_DAY) < 4.5


# --------------------------------------------------------------------------- realism


@pytest.fixture(scope="module")
def day_quotes_and_trades(sim):
    return sim.quotes(SIM_DAY), sim.trades(SIM_DAY)


def test_quotes_are_never_crossed_and_sit_on_a_cent_grid_above_a_dollar(day_quotes_and_trades):
    quotes, trades = (t.to_pandas() for t in day_quotes_and_trades)
    assert (quotes["bid_price"] < quotes["ask_price"]).all()
    for prices in (quotes["bid_price"], quotes["ask_price"], trades["price"]):
        assert (prices >= 1.0).all()
        assert np.allclose(prices * 100, np.round(prices * 100), rtol=0, atol=1e-6)
    assert ((quotes["bid_size"] > 0) & (quotes["bid_size"] % 100 == 0)).all()
    spread_ticks = np.round((quotes["ask_price"] - quotes["bid_price"]) * 100)
    assert (spread_ticks == 1).mean() > 0.4  # liquid names: mostly one tick
    assert set(quotes["bid_exchange"]) <= set("ABCHJKLMNPQUVXYZ") and set(quotes["conditions"]) == {"R"}
    assert set(quotes["tape"]) <= {"A", "B", "C"}


def test_quote_seq_is_the_schema_content_hash(day_quotes_and_trades):
    quotes = day_quotes_and_trades[0].slice(0, 1000)
    expected = quote_seq(quotes.column("ts"), quotes.column("bid_price"), quotes.column("bid_size"),
                         quotes.column("ask_price"), quotes.column("ask_size"))
    assert quotes.column("seq").combine_chunks().equals(expected)
    assert quotes.schema == QUOTES


def test_every_trade_is_at_or_inside_the_prevailing_quote(day_quotes_and_trades):
    quotes, trades = (t.to_pandas().sort_values("ts", kind="stable") for t in day_quotes_and_trades)
    merged = pd.merge_asof(trades, quotes[["symbol", "ts", "bid_price", "ask_price"]], on="ts", by="symbol",
                           direction="backward", allow_exact_matches=True)
    assert merged["bid_price"].notna().all()  # the opening quote precedes the first trade
    assert ((merged["price"] >= merged["bid_price"]) & (merged["price"] <= merged["ask_price"])).all()
    at_touch = (merged["price"] == merged["bid_price"]) | (merged["price"] == merged["ask_price"])
    assert at_touch.mean() > 0.8


def test_trades_look_like_sip_trades(day_quotes_and_trades):
    table = day_quotes_and_trades[1]
    assert table.schema == TRADES
    trades = table.to_pandas()
    assert not trades.duplicated(["symbol", "ts", "exchange", "trade_id"]).any()
    for _, group in trades.groupby("symbol"):
        assert group["trade_id"].is_monotonic_increasing and group["trade_id"].is_unique
    sizes = trades["size"]
    assert (sizes > 0).all() and (sizes < 100).mean() > 0.3 and (sizes % 100 == 0).mean() > 0.3
    fractional = sizes != np.floor(sizes)
    assert fractional.any() and (trades.loc[fractional, "exchange"] == "D").all()
    assert trades["exchange"].str.fullmatch("[A-Z]").all() and (trades["exchange"] == "D").mean() > 0.2
    assert set(trades["conditions"]) <= {"@", "@,I", "@,F", "@,F,I", "@,T", "@,T,I", "@,F,T", "@,F,T,I"}
    tape = dict(trades.groupby("symbol")["tape"].first())
    assert tape["AAPL"] == "C" and tape["JPM"] == "A" and tape["SPY"] == "B"


def test_prices_continue_from_day_to_day(sim):
    previous = sim.daily_bars(date(2024, 11, 25)).to_pandas().set_index("symbol")
    today = sim.daily_bars(SIM_DAY).to_pandas().set_index("symbol")
    gap = (today["open"] / previous["close"] - 1).abs()
    assert gap.max() < 0.15
    reference = sim.daily_bars(date(2024, 6, 28), ["AAPL", "SPY"]).to_pandas().set_index("symbol")
    assert reference.loc["AAPL", "close"] == pytest.approx(190, rel=0.05)
    assert reference.loc["SPY", "close"] == pytest.approx(540, rel=0.05)


def test_a_symbol_not_listed_on_the_day_has_no_data(sim):
    assert sim.minute_bars(date(2010, 1, 4), ["META"]).num_rows == 0
    assert sim.trades(date(2010, 1, 4), ["META", "AAPL"]).column("symbol").unique().to_pylist() == ["AAPL"]
    assert sim.expected_quote_count(date(2010, 1, 4), ["META"]) == 0
    assert list(sim.iter_quotes(date(2010, 1, 4), ["META"])) == []


# --------------------------------------------------------------------------- universe


def test_full_scale_universe_has_3000_stocks_and_etfs_with_real_looking_fields():
    full = SimMarket()
    equities = full.universe("us_equities", SIM_DAY).to_pandas()
    etfs = full.universe("etf", SIM_DAY).to_pandas()
    assert len(equities) + len(etfs) == 3000
    assert set(equities["type"]) == {"CS", "ADRC"} and set(etfs["type"]) == {"ETF"}
    assert set(equities["exchange"]) == {"XNYS", "XNAS", "XASE", "ARCX", "BATS"}
    assert equities["symbol"].str.fullmatch(r"[A-Z]{1,5}(\.[A-Z])?").all()
    caps = equities["market_cap"].sort_values(ascending=False).to_numpy()
    assert caps[0] > 1e12 and caps[0] / np.median(caps) > 100 and caps[-1] > 5e7
    assert full.stock_symbols(SIM_DAY) == sorted([*equities["symbol"], *etfs["symbol"]])
    assert full.universe("otc", SIM_DAY).num_rows == 150


def test_universe_categories_and_schema(sim):
    for category in CATEGORIES:
        table = sim.universe(category, SIM_DAY)
        assert table.schema == UNIVERSE and table.num_rows > 0, category
        assert pc.all(pc.equal(table.column("category"), category)).as_py()
        assert table.column("symbol").to_pylist() == sorted(table.column("symbol").to_pylist())
        assert pc.all(table.column("active")).as_py()
    crypto = sim.symbols(SIM_DAY, category="crypto")
    assert crypto == sorted(["BTC/USD", "ETH/USD", "SOL/USD", "XRP/USD", "DOGE/USD"])
    assert "EUR/USD" in sim.symbols(SIM_DAY, category="fx") and "SPX" in sim.symbols(SIM_DAY, category="indices")
    options = sim.universe("options", SIM_DAY).to_pandas()
    assert 100 <= len(options) <= 1000
    assert options["symbol"].str.fullmatch(r"[A-Z]{1,5}\d{6}[CP]\d{8}").all()
    assert set(options["type"]) == {"call", "put"}


def test_universe_is_point_in_time(sim):
    full = SimMarket()
    assert "META" not in full.symbols(date(2010, 6, 1)) and "META" in full.symbols(date(2013, 6, 3))
    assert "LEH" in full.symbols(date(2008, 1, 2)) and "LEH" not in full.symbols(date(2009, 1, 2))
    gone = full.universe("us_equities", date(2009, 1, 2), include_inactive=True).to_pandas().set_index("symbol")
    assert not gone.loc["LEH", "active"] and gone.loc["LEH", "delist_date"] == date(2008, 9, 17)
    now = full.universe("us_equities", SIM_DAY).to_pandas()
    assert now["delist_date"].isna().all()  # no peeking at future delistings
    # A new listing appears on its list date and not the session before.
    listed = now[pd.to_datetime(now["list_date"]) > pd.Timestamp("2024-01-01")]
    assert len(listed) > 10
    newcomer = listed.sort_values("list_date").iloc[0]
    sessions = calendar.default_calendar()
    first_day = sessions.next_session(newcomer["list_date"] - timedelta(days=1))
    before = sessions.previous_session(first_day)
    assert newcomer["symbol"] in full.stock_symbols(first_day)
    assert newcomer["symbol"] not in full.stock_symbols(before)
    assert full.minute_bars(first_day, [newcomer["symbol"]]).num_rows > 0
    assert full.minute_bars(before, [newcomer["symbol"]]).num_rows == 0
    # The 20-name scale is the top of the same ranking.
    assert set(sim.stock_symbols(SIM_DAY)) <= set(full.stock_symbols(SIM_DAY))


# --------------------------------------------------------------------------- bad input


def test_unknown_symbols_are_named(sim):
    with pytest.raises(InvalidInputError, match=r"ZZZZZ.*expected symbols of the simulated universe"):
        sim.minute_bars(SIM_DAY, ["AAPL", "ZZZZZ"])
    with pytest.raises(InvalidInputError, match="NOPE"):
        sim.iter_quotes(SIM_DAY, ["NOPE"])


def test_reference_only_categories_have_no_market_data(sim):
    with pytest.raises(InvalidInputError, match=r"EUR/USD is in category 'fx'"):
        sim.trades(SIM_DAY, ["EUR/USD"])


def test_bad_requests_are_refused(sim):
    with pytest.raises(InvalidInputError, match="one kind per stream"):
        sim.iter_quotes(SIM_DAY, ["AAPL", "BTC/USD"])
    with pytest.raises(InvalidInputError, match="no time zone"):
        sim.trades(SIM_DAY, start=datetime(2024, 11, 26, 15))
    with pytest.raises(InvalidInputError, match="is after end"):
        sim.trades(SIM_DAY, start=_ny(SIM_DAY, 11), end=_ny(SIM_DAY, 10))
    with pytest.raises(InvalidInputError, match="batch_size"):
        sim.iter_trades(SIM_DAY, batch_size=0)
    with pytest.raises(InvalidInputError, match="unknown category 'bonds'"):
        sim.universe("bonds", SIM_DAY)
    with pytest.raises(InvalidInputError, match="not a date"):
        sim.minute_bars("26/11/2024")
    with pytest.raises(InvalidInputError, match="n_stocks=-1"):
        SimMarket(n_stocks=-1)
    with pytest.raises(InvalidInputError, match="activity=0"):
        SimMarket(activity=0)


def test_mixed_kinds_in_one_table_are_sorted_by_symbol(sim):
    # A session day that is also a UTC day: stocks and crypto may share a table (not a stream).
    bars = sim.minute_bars(SIM_DAY, ["XOM", "BTC/USD", "AAPL"])
    symbols = bars.column("symbol").to_pylist()
    assert symbols == sorted(symbols) and set(symbols) == {"AAPL", "BTC/USD", "XOM"}
    assert re.fullmatch(r"SimMarket\(seed=7, .*\)", repr(sim))
