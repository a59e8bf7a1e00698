"""Corporate actions as data: the simulated market's actions, the replays serving them through the
vendors' real clients, raw bars from every source, the `corporate_actions` asset, and lakes
written with adjusted REST bars.

The replays of this module run with their clock on 2026-12-01, after AAPL's 2:1 split on the
2026-11-27 half day, with flat files for 2026-11-25 to 2026-11-30.
"""

from __future__ import annotations

import json
import urllib.request
from datetime import date, datetime, timezone

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from polygon import RESTClient

from market_platform import calendar
from market_platform.defs.corporate_actions.assets import corporate_actions
from market_platform.defs.corporate_actions.schedules import refresh_request
from market_platform.defs.resources import LakeResource, TickStoreResource
from market_platform.history import actions, raw
from market_platform.replay import ReplayServers, SimProvider
from market_platform.schemas import BARS, CORPORATE_ACTIONS, RAW_BARS_KEY, Source
from market_platform.sources.sim import SimMarket
from market_platform.storage.lake import Lake
from market_platform.storage.timescale import TickStore
from market_platform_tests.fixtures.history import replay_vendors
from market_platform_tests.fixtures.sim import small_sim

NOW = datetime(2026, 12, 1, 22, 0, tzinfo=timezone.utc)
TODAY = date(2026, 12, 1)
WEEK = (date(2026, 11, 25), date(2026, 11, 30))
SPLIT_DAY = date(2026, 11, 27)  # AAPL 2:1, a half day


@pytest.fixture(scope="module")
def servers(sim: SimMarket):
    replay = ReplayServers(SimProvider(sim), flatfile_days=WEEK, clock=lambda: NOW, bucket="flatfiles-corp-actions")
    with replay:
        yield replay


@pytest.fixture
def fresh(servers):
    servers.reset()
    servers.alpaca.page_cap = 10_000
    yield servers
    servers.alpaca.page_cap = 10_000


def known(sim: SimMarket, action_type: str) -> pa.Table:
    """The sim's actions of a type that a vendor knows on TODAY."""
    table = sim.corporate_actions("2004-01-01", "2027-12-31", as_of=TODAY)
    return table.filter(pc.equal(table.column("action_type"), action_type))


def _daily(sim: SimMarket, day, symbol: str) -> dict:
    return sim.daily_bars(day, [symbol]).to_pylist()[0]


# --------------------------------------------------------------------------- the simulated market


def test_the_simulated_market_has_every_kind_of_action_deterministically():
    a = small_sim().corporate_actions("2004-01-02", "2027-12-31")
    b = SimMarket(7, n_stocks=20, activity=0.5).corporate_actions("2004-01-02", "2027-12-31")
    assert a.equals(b) and a.schema.equals(CORPORATE_ACTIONS)
    assert len(set(a.column("action_id").to_pylist())) == a.num_rows
    full = SimMarket(7).corporate_actions("2004-01-02", "2027-12-31").to_pandas()
    splits = full[full.action_type == "split"]
    ratios = set(zip(splits.split_from, splits.split_to))
    assert {(1.0, 2.0), (1.0, 3.0), (2.0, 3.0), (10.0, 1.0)} <= ratios
    assert any(calendar.session(d).is_half_day for d in splits.ex_date)
    dividends = full[full.action_type == "dividend"]
    assert set(dividends.dividend_type) == {"CD", "SC"} and (dividends.cash_amount > 0).all()
    assert (dividends.record_date >= dividends.ex_date).all() and (dividends.pay_date > dividends.ex_date).all()
    assert (full.announced_date <= full.ex_date).all()
    renames = full[full.action_type == "rename"]
    assert renames[["symbol", "new_symbol"]].values.tolist() == [["RDS.A", "SHEL"]]
    delisted = full[full.action_type == "delisting"]
    assert "TWTR" in set(delisted.symbol) and all(calendar.is_session(d) for d in delisted.ex_date)
    # The demo's ticker: a split on a half day and dividends around it.
    aapl = full[(full.symbol == "AAPL") & (full.ex_date >= date(2026, 9, 1)) & (full.ex_date <= TODAY)]
    assert set(aapl.action_type) == {"split", "dividend"}


@pytest.mark.parametrize("symbol, ex", [("AAPL", SPLIT_DAY), ("NVDA", date(2024, 6, 10)), ("TSLA", date(2022, 8, 25)),
                                        ("RIVN", date(2025, 3, 3)), ("MSFT", date(2025, 7, 3))])
def test_raw_prices_jump_by_exactly_the_split_ratio_on_the_ex_date(symbol, ex):
    sim = small_sim()
    action = sim.corporate_actions(ex, ex, symbols=[symbol]).to_pylist()[0]
    ratio = action["split_from"] / action["split_to"]
    prev = calendar.default_calendar().previous_session(ex)
    row = np.array([sim._ref.index[symbol]])
    # The model's factor: the day's raw path is the continuous one times C(day), exactly.
    (c_prev,), (s_prev,) = sim._actions.factors(row, prev.toordinal())
    (c_ex,), (s_ex,) = sim._actions.factors(row, ex.toordinal())
    assert np.exp(c_ex - c_prev) == pytest.approx(ratio, rel=1e-12)
    assert np.exp(s_prev - s_ex) == pytest.approx(1 / ratio, rel=1e-12)  # trade sizes scale inversely
    # The bars: the ex-date opens at the previous close times the ratio (to the first trade's spread).
    before, after = _daily(sim, prev, symbol), _daily(sim, ex, symbol)
    assert after["open"] / before["close"] == pytest.approx(ratio, rel=0.02)
    minutes = sim.minute_bars(ex, [symbol])
    assert minutes.num_rows and pc.max(minutes.column("high")).as_py() < before["close"] * ratio * 1.25


def test_a_dividend_takes_its_amount_off_the_previous_close():
    sim = small_sim()
    row = sim.corporate_actions("2026-11-30", "2026-11-30", symbols=["AAPL"]).to_pylist()[0]
    assert row["action_type"] == "dividend"  # the first session after AAPL's split
    prev = calendar.default_calendar().previous_session(row["ex_date"])
    index = np.array([sim._ref.index["AAPL"]])
    (c_prev,), _ = sim._actions.factors(index, prev.toordinal())
    (c_ex,), _ = sim._actions.factors(index, row["ex_date"].toordinal())
    path_close = float(np.exp(sim._log_close(index, prev.toordinal())[0] + c_prev))
    assert np.exp(c_ex - c_prev) == pytest.approx(1 - row["cash_amount"] / path_close, rel=1e-9)
    close = _daily(sim, prev, "AAPL")["close"]  # post-split terms: a quarter of a 0.4-3.4% yield
    assert 0.001 * close - 0.01 <= row["cash_amount"] <= 0.0085 * close + 0.01


def test_a_renamed_ticker_trades_under_its_new_symbol_from_the_ex_date():
    sim = small_sim()
    before, after = date(2022, 1, 28), date(2022, 1, 31)
    assert sim.minute_bars(before, ["RDS.A", "SHEL"]).column("symbol").unique().to_pylist() == ["RDS.A"]
    assert sim.minute_bars(after, ["RDS.A", "SHEL"]).column("symbol").unique().to_pylist() == ["SHEL"]
    full = SimMarket(7)
    assert "RDS.A" in full.symbols(before) and "SHEL" not in full.symbols(before)
    assert "SHEL" in full.symbols(after) and "RDS.A" not in full.symbols(after)
    # One path: the rename moves no price.
    assert _daily(sim, after, "SHEL")["open"] / _daily(sim, before, "RDS.A")["close"] == pytest.approx(1, rel=0.03)


# --------------------------------------------------------------------------- the replays, through the real clients


def test_polygon_splits_and_dividends_through_the_client_equal_the_sim(fresh, sim):
    client = RESTClient(fresh.keys.polygon_api_key, base=fresh.polygon_url)
    splits = list(client.list_splits(execution_date_gte="2004-01-01", limit=2, order="asc"))
    assert fresh.polygon.log.count("/v3/reference/splits") > 1  # paged, two at a time
    expected = known(sim, "split")
    assert sorted((s.ticker, s.execution_date, s.split_from, s.split_to) for s in splits) == sorted(
        (r["symbol"], r["ex_date"].isoformat(), r["split_from"], r["split_to"]) for r in expected.to_pylist())
    dividends = list(client.list_dividends(ticker="AAPL", limit=50))
    mine = known(sim, "dividend").filter(pc.equal(known(sim, "dividend").column("symbol"), "AAPL"))
    assert sorted((d.ex_dividend_date, d.cash_amount, d.dividend_type, d.declaration_date, d.record_date, d.pay_date)
                  for d in dividends) == sorted(
        (r["ex_date"].isoformat(), r["cash_amount"], r["dividend_type"], r["announced_date"].isoformat(),
         r["record_date"].isoformat(), r["pay_date"].isoformat()) for r in mine.to_pylist())
    # Only what was announced by the replay's today: AAPL's 2027 dividends are not there yet.
    assert max(d.ex_dividend_date for d in dividends) <= TODAY.isoformat()


def _get(servers, path: str) -> dict:
    request = urllib.request.Request(f"{servers.polygon_url}{path}",
                                     headers={"Authorization": f"Bearer {servers.keys.polygon_api_key}"})
    with urllib.request.urlopen(request) as response:
        return json.load(response)


def test_polygon_v1_splits_carry_the_historical_adjustment_factor(fresh):
    body = _get(fresh, "/stocks/v1/splits?ticker=NVDA")
    (nvda,) = body["results"]
    assert nvda["adjustment_type"] == "forward_split" and nvda["historical_adjustment_factor"] == pytest.approx(0.1)
    body = _get(fresh, "/stocks/v1/splits?ticker.any_of=AAPL,TSLA&sort=execution_date.asc")
    assert [(r["ticker"], r["execution_date"], r["historical_adjustment_factor"]) for r in body["results"]] == [
        ("TSLA", "2022-08-25", pytest.approx(1 / 3)), ("AAPL", "2026-11-27", pytest.approx(0.5))]
    dividends = _get(fresh, "/stocks/v1/dividends?ticker=AAPL&limit=2")
    assert len(dividends["results"]) == 2 and "next_url" in dividends
    latest = dividends["results"][0]  # newest first: each factor holds every later dividend's
    assert latest["ex_dividend_date"] == "2026-11-30" and latest["distribution_type"] == "recurring"
    assert 0.99 < latest["historical_adjustment_factor"] < 1
    assert dividends["results"][1]["historical_adjustment_factor"] < latest["historical_adjustment_factor"]


def test_polygon_aggregates_are_split_adjusted_as_of_today_unless_asked_raw(fresh, sim):
    client = RESTClient(fresh.keys.polygon_api_key, base=fresh.polygon_url)
    raw_bars = list(client.list_aggs("AAPL", 1, "day", "2026-11-25", "2026-11-30", adjusted=False))
    adjusted = list(client.list_aggs("AAPL", 1, "day", "2026-11-25", "2026-11-30"))  # Polygon's default
    expected = [_daily(sim, d, "AAPL") for d in calendar.sessions(*WEEK)]
    assert [b.close for b in raw_bars] == [e["close"] for e in expected]
    before = [b.timestamp < int(datetime(2026, 11, 27, 5, tzinfo=timezone.utc).timestamp() * 1000) for b in raw_bars]
    for b, a, old in zip(raw_bars, adjusted, before, strict=True):
        assert a.close == pytest.approx(b.close * (0.5 if old else 1.0), rel=1e-12)
        assert a.volume == pytest.approx(b.volume * (2.0 if old else 1.0), rel=1e-12)


def test_alpaca_corporate_actions_through_the_client_equal_the_sim(fresh, sim):
    from alpaca.data.historical.corporate_actions import CorporateActionsClient
    from alpaca.data.requests import CorporateActionsRequest

    fresh.alpaca.page_cap = 25  # several pages
    client = CorporateActionsClient(fresh.keys.alpaca_key_id, fresh.keys.alpaca_secret, url_override=fresh.alpaca_url)
    result = client.get_corporate_actions(CorporateActionsRequest(start=date(2004, 1, 1), end=TODAY, limit=None))
    assert fresh.alpaca.log.count("/v1/corporate-actions") > 1
    data = result.data
    splits = {(a.symbol, a.ex_date, a.old_rate, a.new_rate) for a in data["forward_splits"] + data.get("reverse_splits", [])}
    assert splits == {(r["symbol"], r["ex_date"], r["split_from"], r["split_to"]) for r in known(sim, "split").to_pylist()}
    cash = {(a.symbol, a.ex_date, a.rate, a.special) for a in data["cash_dividends"]}
    assert cash == {(r["symbol"], r["ex_date"], r["cash_amount"], r["dividend_type"] == "SC")
                    for r in known(sim, "dividend").to_pylist() if r["ex_date"] <= TODAY}  # end=TODAY
    # SHEL is beyond this market's 20 names, and so outside its whole-market lists; asked by name:
    renamed = client.get_corporate_actions(CorporateActionsRequest(
        symbols=["SHEL"], types=["name_change"], start=date(2004, 1, 1), end=TODAY)).data
    assert {(a.old_symbol, a.new_symbol, a.process_date) for a in renamed["name_changes"]} == {
        ("RDS.A", "SHEL", date(2022, 1, 31))}


def test_alpaca_bars_raw_split_and_all_adjustments(fresh, sim):
    from alpaca.data.enums import Adjustment, DataFeed
    from alpaca.data.historical import StockHistoricalDataClient
    from alpaca.data.requests import StockBarsRequest
    from alpaca.data.timeframe import TimeFrame

    client = StockHistoricalDataClient(fresh.keys.alpaca_key_id, fresh.keys.alpaca_secret, raw_data=True,
                                       url_override=fresh.alpaca_url)

    def closes(adjustment):
        bars = client.get_stock_bars(StockBarsRequest(
            symbol_or_symbols="AAPL", timeframe=TimeFrame.Day, start=datetime(2026, 11, 25, tzinfo=timezone.utc),
            end=datetime(2026, 11, 30, 23, tzinfo=timezone.utc), adjustment=adjustment, feed=DataFeed.SIP))["AAPL"]
        return [(b["c"], b["v"]) for b in bars]

    raw_, split, every = closes(Adjustment.RAW), closes(Adjustment.SPLIT), closes(Adjustment.ALL)
    days = calendar.sessions(*WEEK)
    assert [c for c, _ in raw_] == [_daily(sim, d, "AAPL")["close"] for d in days]
    dividend = sim.corporate_actions(WEEK[1], WEEK[1], symbols=["AAPL"]).to_pylist()[0]
    div_factor = 1 - dividend["cash_amount"] / _daily(sim, SPLIT_DAY, "AAPL")["close"]
    for day, (c, v), (cs, vs), (ca, _) in zip(days, raw_, split, every, strict=True):
        s = 0.5 if day < SPLIT_DAY else 1.0
        d = div_factor if day < WEEK[1] else 1.0
        assert cs == pytest.approx(c * s, rel=1e-12) and vs == pytest.approx(v / s, rel=1e-12)
        assert ca == pytest.approx(c * s * d, rel=1e-12)


def test_rest_raw_and_flat_files_give_identical_sessions_across_a_split(fresh):
    polygon, flatfiles = fresh.polygon_source(), fresh.flatfiles_source()
    for day in calendar.sessions(*WEEK):
        rest = polygon.minute_bars(day, ["AAPL", "MSFT", "NVDA"])
        flat = flatfiles.read(day, ["AAPL", "MSFT", "NVDA"]).table
        assert rest.num_rows > 0
        # Polygon's default (adjusted) would have halved AAPL before the split: the source asks raw.
        assert rest.drop_columns(["source", "vwap"]).equals(flat.drop_columns(["source", "vwap"]))


def test_sources_fetch_the_same_actions_as_the_sim(fresh, sim):
    expected = sim.corporate_actions("2004-01-02", "2027-12-31", as_of=TODAY)
    for table in (fresh.polygon_source().corporate_actions("2004-01-02", "2027-12-31"),
                  fresh.alpaca_source().corporate_actions("2004-01-02", "2027-12-31")):
        assert table.schema.equals(CORPORATE_ACTIONS)
        source = table.column("source")[0].as_py()
        kinds = {"polygon": {"split", "dividend", "delisting"}, "alpaca": {"split", "dividend", "rename", "delisting"}}
        want = expected.filter(pc.is_in(expected.column("action_type"), value_set=pa.array(sorted(kinds[source]))))
        compare = ["action_id", "symbol", "ex_date", "split_from", "split_to", "cash_amount", "new_symbol"]
        assert table.select(compare).equals(want.select(compare)), source
    only_aapl = fresh.polygon_source().corporate_actions("2026-01-01", "2026-12-31", symbols=["AAPL"])
    assert set(only_aapl.column("symbol").to_pylist()) == {"AAPL"} and only_aapl.num_rows >= 4


# --------------------------------------------------------------------------- the asset, the schedule


def test_corporate_actions_asset_materializes_into_the_lake_and_the_tick_store(tmp_path, replay, make_database):
    resources = {"vendors": replay_vendors(replay), "lake": LakeResource(url=str(tmp_path / "lake")),
                 "tick_store": TickStoreResource(url=make_database("postgres"))}
    resources["tick_store"].store().init_schema()
    assert dg.materialize([corporate_actions], resources=resources).success
    lake = resources["lake"].lake()
    assert [s["source"] for s in lake.partitions("corporate_actions")] == ["alpaca", "polygon"]
    digest = {s: lake.file_digest("corporate_actions", {"source": s}) for s in ("alpaca", "polygon")}
    store = TickStore(resources["tick_store"].url)
    with store.connect() as conn:
        counts = dict(conn.execute("SELECT source, count(*) FROM corporate_actions GROUP BY source").fetchall())
    assert counts == {s: lake.count("corporate_actions", {"source": s}) for s in ("alpaca", "polygon")}
    assert counts["polygon"] > 50
    # The daily refresh (the last 30 days) and a rerun change nothing; a tickers run keeps the rest.
    assert dg.materialize([corporate_actions], resources=resources).success
    assert dg.materialize([corporate_actions], resources=resources,
                          run_config={"ops": {"corporate_actions": {"config": {"tickers": ["NVDA"]}}}}).success
    assert {s: lake.file_digest("corporate_actions", {"source": s}) for s in ("alpaca", "polygon")} == digest
    with store.connect() as conn:
        assert dict(conn.execute("SELECT source, count(*) FROM corporate_actions GROUP BY source").fetchall()) == counts
        nvda = conn.execute("SELECT split_from, split_to, ex_date FROM corporate_actions "
                            "WHERE symbol = 'NVDA' AND action_type = 'split' AND source = 'polygon'").fetchall()
    assert nvda == [(1.0, 10.0, date(2024, 6, 10))]


def test_a_refresh_replaces_its_window_only():
    old = pa.Table.from_pylist([
        {"action_id": "split:A:2020-01-02", "symbol": "A", "action_type": "split", "ex_date": date(2020, 1, 2),
         "announced_date": date(2020, 1, 2), "split_from": 1.0, "split_to": 2.0, "source": "polygon"},
        {"action_id": "split:B:2026-11-02", "symbol": "B", "action_type": "split", "ex_date": date(2026, 11, 2),
         "announced_date": date(2026, 11, 2), "split_from": 1.0, "split_to": 2.0, "source": "polygon"},
    ], schema=CORPORATE_ACTIONS)
    fresh = old.slice(0, 0)  # the vendor withdrew B's split
    merged = actions.merge(old, fresh, start=date(2026, 11, 1), end=date(2027, 11, 1))
    assert merged.column("action_id").to_pylist() == ["split:A:2020-01-02"]
    kept = actions.merge(old, fresh, start=date(2004, 1, 2), end=date(2027, 11, 1), symbols=["A"])
    assert kept.column("action_id").to_pylist() == ["split:B:2026-11-02"]


def test_the_schedule_refreshes_on_sessions_only():
    assert isinstance(refresh_request(date(2026, 11, 27)), dg.RunRequest)  # a half day is a session
    skip = refresh_request(date(2026, 11, 26))
    assert isinstance(skip, dg.SkipReason) and "not a trading session" in skip.skip_message


# --------------------------------------------------------------------------- lakes written with adjusted REST bars


def test_a_lake_with_adjusted_rest_bars_is_found_and_the_rebuild_command_named(tmp_path, sim):
    lake = Lake(tmp_path / "lake")
    day = date(2024, 6, 3)  # a week before NVDA's 10:1 split
    bars = sim.minute_bars(day, ["NVDA", "AAPL"])
    bars = bars.set_column(bars.schema.get_field_index("source"), "source",
                           pa.repeat(pa.scalar(Source.POLYGON_REST.value), bars.num_rows))
    # What the platform wrote before bars were stored raw: no marker in the file.
    path = tmp_path / "lake" / "minute_bars" / f"date={day.isoformat()}" / "data.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(bars.replace_schema_metadata(None), path)
    lake.write_partition("minute_bars", date(2024, 6, 4), bars)  # written now: raw, marked
    assert lake.file_metadata("minute_bars", date(2024, 6, 4))[RAW_BARS_KEY] == b"raw"
    found = raw.suspects(lake)
    assert [(s.dataset, s.day, s.split_symbols) for s in found] == [("minute_bars", day, ())]
    lake.write_partition("corporate_actions", {"source": "sim"}, sim.corporate_actions("2004-01-02", "2027-12-31"))
    (suspect,) = raw.suspects(lake)
    assert suspect.split_symbols == ("AAPL", "NVDA")  # AAPL's split is on 2026-11-27
    lines = raw.report(lake)
    assert "market-platform backfill --from 2024-06-03 --to 2024-06-03 --timeframes 1m --source rest" in lines[-1]
    assert not raw.is_raw(lake, "minute_bars", day) and raw.is_raw(lake, "minute_bars", date(2024, 6, 4))


def test_every_bar_table_says_it_is_raw():
    assert BARS.metadata[RAW_BARS_KEY] == b"raw"
    assert small_sim().minute_bars(date(2024, 11, 26), ["AAPL"]).schema.metadata[RAW_BARS_KEY] == b"raw"


def test_new_tickers_in_the_universe_get_their_whole_history_of_actions(history_resources):
    from market_platform.defs.corporate_actions.sensors import new_ticker_actions_sensor
    from market_platform.defs.universe.assets import ticker_universe

    instance = dg.DagsterInstance.ephemeral()
    for day in (date(2012, 5, 1), date(2012, 6, 1)):  # META listed on 2012-05-18
        assert dg.materialize([ticker_universe], partition_key="us_equities", resources=history_resources,
                              instance=instance,
                              run_config={"ops": {"ticker_universe": {"config": {"as_of": day.isoformat()}}}}).success
    context = dg.build_sensor_context(instance=instance, resources={"lake": history_resources["lake"]})
    (request,) = new_ticker_actions_sensor(context)
    assert request.run_config == {"ops": {"corporate_actions": {"config": {"tickers": ["META"]}}}}
    assert isinstance(new_ticker_actions_sensor(context), dg.SkipReason)  # the cursor moved on


def test_sources_agree_does_not_compare_adjusted_rest_bars_with_raw_ones(tmp_path, sim, make_database):
    from market_platform.defs.bars.checks import _sources_agree

    day = date(2024, 11, 26)
    bars = sim.minute_bars(day, ["AAPL"])
    bars = bars.set_column(bars.schema.get_field_index("source"), "source",
                           pa.repeat(pa.scalar(Source.POLYGON_REST.value), bars.num_rows))
    path = tmp_path / "lake" / "minute_bars" / f"date={day.isoformat()}" / "data.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(bars.replace_schema_metadata(None), path)
    lake, tick_store = LakeResource(url=str(tmp_path / "lake")), TickStoreResource(url=make_database("postgres"))
    tick_store.store().init_schema()
    outcome = _sources_agree(lake, tick_store, day.isoformat())
    assert not outcome.passed and "--from 2024-11-26 --to 2024-11-26 --timeframes 1m --source rest" in outcome.summary
    lake.lake().write_partition("minute_bars", day, bars)  # fetched again: raw
    assert "nothing to compare" in _sources_agree(lake, tick_store, day.isoformat()).summary
