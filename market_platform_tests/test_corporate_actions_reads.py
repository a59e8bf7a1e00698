"""Adjusted and point-in-time reads (analytics.adjust), against an independent pandas computation of
cumulative split and dividend factors over raw bars in which the actions really happened
(fixtures/corporate.py: a 2:1 forward split, a 1:10 reverse split, a 3:2 split on a half day, a
3:1 split after a rename, regular and special dividends, a rename and a delisting)."""

from __future__ import annotations

from datetime import date, datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner

from market_platform import calendar, schemas
from market_platform.analytics import adjust, charts, metrics, quality, query
from market_platform.cli import main
from market_platform.defs.bars.checks import _no_unexplained_jumps
from market_platform.errors import InvalidInputError
from market_platform.storage import rollups
from market_platform.storage.lake import Lake
from market_platform_tests.fixtures.corporate import CORP_ACTIONS, CORP_DAYS, corp_bars, write_corp_lake

PRICES = ["open", "high", "low", "close", "vwap"]


# -- the independent reference ------------------------------------------------------------------


def reference_factors(raw: pd.DataFrame, actions: pd.DataFrame, as_of: date | None = None) -> pd.DataFrame:
    """`raw` minute bars with `lineage` (today's ticker), `f_split` and `f_all`, by plain pandas:
    each action in turn scales the bars of its ticker's history before its ex-date."""
    df = raw.sort_values(["symbol", "ts"]).reset_index(drop=True)
    df["day"] = df["ts"].dt.tz_convert("America/New_York").dt.date
    if as_of is not None:
        actions = actions[(actions.announced_date <= as_of) & (actions.ex_date <= as_of)]
    df["lineage"] = df["symbol"]
    for a in actions[actions.action_type == "rename"].sort_values("ex_date").itertuples():
        df.loc[(df.lineage == a.symbol) & (df.day < a.ex_date), "lineage"] = a.new_symbol
    df["f_split"] = 1.0
    df["f_all"] = 1.0
    for a in actions.itertuples():
        before = df[(df.symbol == a.symbol) & (df.day < a.ex_date)]
        if before.empty:
            continue
        earlier = (df.lineage == before.lineage.iloc[-1]) & (df.day < a.ex_date)
        if a.action_type == "split":
            df.loc[earlier, "f_split"] *= a.split_from / a.split_to
            df.loc[earlier, "f_all"] *= a.split_from / a.split_to
        elif a.action_type == "dividend":
            prev_close = before.close.iloc[-1]  # the last raw close before the ex-date
            df.loc[earlier, "f_all"] *= 1 - a.cash_amount / prev_close
    return df


def apply(df: pd.DataFrame, kind: str) -> pd.DataFrame:
    out = df.copy()
    for p in PRICES:
        out[p] = out[p] * out[f"f_{kind}"]
    out["volume"] = out["volume"] / out["f_split"]
    return out


@pytest.fixture(scope="module")
def raw_frame() -> pd.DataFrame:
    return corp_bars().to_pandas()


@pytest.fixture(scope="module")
def reference(raw_frame) -> pd.DataFrame:
    return reference_factors(raw_frame, CORP_ACTIONS.to_pandas())


def day_factors(reference: pd.DataFrame) -> pd.DataFrame:
    return reference.groupby(["symbol", "day"], as_index=False)[["lineage", "f_split", "f_all"]].first()


# -- adjusted views ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["split", "all"])
@pytest.mark.parametrize("dataset", ["minute_bars", "bars_5m", "bars_1d"])
def test_adjusted_views_equal_the_pandas_reference(corp_lake, reference, dataset, kind):
    got = query.query(f"SELECT * FROM {dataset}_adjusted_{kind} ORDER BY traded_symbol, ts", lake=corp_lake).to_pandas()
    raw = corp_lake.query(f"SELECT * FROM {dataset} ORDER BY symbol, ts").to_pandas()
    raw["day"] = raw["date"]
    want = apply(raw.merge(day_factors(reference), on=["symbol", "day"], how="left"), kind)
    assert len(got) == len(want) == len(raw) > 0
    assert got["traded_symbol"].tolist() == want["symbol"].tolist()
    assert got["symbol"].tolist() == want["lineage"].tolist()
    for column in [*PRICES, "volume"]:
        np.testing.assert_allclose(got[column], want[column], rtol=1e-12)
    assert got["trade_count"].tolist() == raw["trade_count"].tolist()
    # The raw dataset is untouched: rollups of raw bars stay raw.
    assert corp_lake.query(f"SELECT sum(close) AS s FROM {dataset}")["s"][0].as_py() == pytest.approx(raw["close"].sum())


def test_every_action_kind_is_exercised(reference):
    moved = reference.groupby("symbol")[["f_split", "f_all"]].agg(lambda s: s.nunique())
    assert (moved.loc[["AAA", "BBB", "CCC", "DDD"], "f_all"] > 1).all()
    assert moved.loc["FFF"].tolist() == [1, 1] and moved.loc["EEE"].tolist() == [1, 1]
    assert calendar.session(date(2024, 11, 29)).is_half_day  # BBB's 3:2 split


def test_adjusted_daily_closes_are_continuous_where_raw_ones_jump(corp_lake):
    raw = corp_lake.query("SELECT symbol, date, close FROM bars_1d ORDER BY symbol, date").to_pandas()
    adjusted = query.query("SELECT symbol, date, close FROM bars_1d_adjusted_split ORDER BY symbol, date",
                           lake=corp_lake).to_pandas()
    raw_moves = raw.groupby("symbol")["close"].pct_change().abs()
    adjusted_moves = adjusted.groupby("symbol")["close"].pct_change().abs()
    assert raw_moves.max() > 0.3          # the splits, as traded
    assert adjusted_moves.max() < 0.05    # the market's own moves (DDD spans CCC's rename)


def test_renamed_ticker_history_is_both_symbols_labelled(corp_lake):
    rows = query.query("SELECT traded_symbol, min(date) AS first, max(date) AS last, count(*) AS n "
                       "FROM bars_1d_adjusted_all WHERE symbol = 'DDD' GROUP BY 1 ORDER BY 2", lake=corp_lake).to_pylist()
    assert [(r["traded_symbol"], r["first"], r["last"]) for r in rows] == [
        ("CCC", CORP_DAYS[0], date(2024, 12, 13)), ("DDD", date(2024, 12, 16), CORP_DAYS[-1])]
    assert query.query("SELECT count(*) AS n FROM bars_1d_adjusted_all WHERE symbol = 'CCC'",
                       lake=corp_lake)["n"][0].as_py() == 0
    labelled = query.query("SELECT DISTINCT symbol, traded_symbol FROM minute_bars_labelled ORDER BY 2",
                           lake=corp_lake).to_pylist()
    assert {"symbol": "DDD", "traded_symbol": "CCC"} in labelled
    lineage = query.query("SELECT * FROM symbol_lineage", lake=corp_lake).to_pylist()
    assert [(r["traded_symbol"], r["end_day"], r["symbol"]) for r in lineage] == [("CCC", date(2024, 12, 16), "DDD")]
    # The delisted ticker keeps its history, to its last session.
    eee = query.query("SELECT max(date) AS last FROM bars_1d_adjusted_all WHERE symbol = 'EEE'", lake=corp_lake)
    assert eee["last"][0].as_py() == date(2024, 12, 19)


def test_query_without_actions_reads_adjusted_views_as_raw(tmp_path):
    bars = corp_bars()
    lake = write_corp_lake(Lake(tmp_path / "lake"), bars.filter(pc.equal(bars["symbol"], "FFF")), actions=None)
    got = query.query("SELECT close FROM minute_bars_adjusted_all ORDER BY ts", lake=lake)["close"]
    assert got.to_pylist() == lake.query("SELECT close FROM minute_bars ORDER BY ts")["close"].to_pylist()


# -- point in time ------------------------------------------------------------------------------


def test_as_of_applies_only_actions_in_effect_and_announced(corp_lake, raw_frame):
    # AAA's 2:1 split: ex 2024-11-25, announced 2024-11-19.
    before = adjust.bars_as_of("AAA", CORP_DAYS[0], "2024-11-22", "2024-11-22", adjust="all", lake=corp_lake)
    after = adjust.bars_as_of("AAA", CORP_DAYS[0], "2024-11-22", "2024-11-25", adjust="all", lake=corp_lake)
    assert before.num_rows == after.num_rows == 5
    np.testing.assert_allclose(pc.divide(after["close"], before["close"]).to_numpy(), 0.5, rtol=1e-12)
    np.testing.assert_allclose(pc.divide(after["volume"], before["volume"]).to_numpy(), 2.0, rtol=1e-12)
    # As of its last bar, a read is as traded: nothing after it applied.
    raw = raw_frame[(raw_frame.symbol == "AAA")]
    raw_daily = raw.groupby(raw.ts.dt.tz_convert("America/New_York").dt.date)["close"].last()
    np.testing.assert_allclose(before["close"].to_numpy(), raw_daily.loc[:date(2024, 11, 22)].to_numpy(), rtol=1e-12)
    # Each read equals the reference computed with the actions known then.
    for as_of in (date(2024, 11, 22), date(2024, 12, 10), date(2024, 12, 31)):
        got = adjust.bars_as_of(["AAA", "BBB", "DDD"], CORP_DAYS[0], as_of, as_of, adjust="all", timeframe="1m",
                                lake=corp_lake).to_pandas()
        ref = apply(reference_factors(raw_frame[raw_frame.ts.dt.tz_convert("America/New_York").dt.date <= as_of],
                                      CORP_ACTIONS.to_pandas(), as_of), "all")
        ref = ref[ref.lineage.isin(["AAA", "BBB", "DDD"])].sort_values(["lineage", "ts"])
        assert got["symbol"].tolist() == ref["lineage"].tolist()
        np.testing.assert_allclose(got["close"], ref["close"], rtol=1e-12)


def test_an_action_applies_from_its_announcement_not_its_ex_date(tmp_path):
    # The same split recorded late: announced the day after its ex-date.
    late = CORP_ACTIONS.to_pandas()
    late.loc[late.action_id == "split:AAA:2024-11-25", "announced_date"] = date(2024, 11, 26)
    lake = write_corp_lake(Lake(tmp_path / "lake"), corp_bars(),
                           schemas.conform(pa.Table.from_pandas(late, preserve_index=False), schemas.CORPORATE_ACTIONS))
    read = {as_of: adjust.bars_as_of("AAA", CORP_DAYS[0], "2024-11-25", as_of, adjust="split", lake=lake)
            for as_of in ("2024-11-25", "2024-11-26")}
    ratio = pc.divide(read["2024-11-26"]["close"], read["2024-11-25"]["close"]).to_numpy()
    np.testing.assert_allclose(ratio[:-1], 0.5, rtol=1e-12)  # the sessions before the ex-date
    assert ratio[-1] == 1.0                                   # the ex-date itself: already as traded
    as_of_query = query.query("SELECT count(*) AS n FROM adjustment_factors WHERE symbol = 'AAA'",
                              lake=lake, as_of=date(2024, 11, 25))
    assert as_of_query["n"][0].as_py() == 0
    # A view as of a day holds no later session: no look-ahead through SQL either.
    latest = query.query("SELECT max(date) AS last FROM minute_bars_adjusted_split", lake=lake, as_of=date(2024, 11, 25))
    assert latest["last"][0].as_py() == date(2024, 11, 25)


def test_bars_as_of_names_a_bad_request(corp_lake):
    with pytest.raises(InvalidInputError, match="after as_of"):
        adjust.bars_as_of("AAA", "2024-11-18", "2024-12-31", "2024-12-01", lake=corp_lake)
    with pytest.raises(InvalidInputError, match="adjust='both'"):
        adjust.bars_as_of("AAA", "2024-11-18", "2024-11-20", adjust="both", lake=corp_lake)
    with pytest.raises(InvalidInputError, match="timeframe '2m'"):
        adjust.bars_as_of("AAA", "2024-11-18", "2024-11-20", timeframe="2m", lake=corp_lake)


def test_renamed_ticker_as_of_before_the_rename_is_the_old_name(corp_lake):
    old = adjust.bars_as_of("CCC", CORP_DAYS[0], "2024-12-13", "2024-12-13", lake=corp_lake)
    assert old.num_rows == CORP_DAYS.index(date(2024, 12, 13)) + 1
    assert set(old["symbol"].to_pylist()) == set(old["traded_symbol"].to_pylist()) == {"CCC"}
    assert adjust.bars_as_of("DDD", CORP_DAYS[0], "2024-12-13", "2024-12-13", lake=corp_lake).num_rows == 0
    new = adjust.bars_as_of("DDD", CORP_DAYS[0], CORP_DAYS[-1], lake=corp_lake)
    assert new.num_rows == len(CORP_DAYS) and set(new["traded_symbol"].to_pylist()) == {"CCC", "DDD"}


# -- metrics, the check, charts ------------------------------------------------------------------


def test_daily_metrics_returns_across_actions_equal_the_reference(corp_lake, reference):
    adjusted = apply(reference, "all")
    closes = adjusted.groupby(["lineage", "day"], as_index=False)[["symbol", "close"]].last()
    closes["pct_change"] = closes.groupby("lineage")["close"].pct_change()  # DDD's spans CCC's rename
    for day in (date(2024, 11, 25), date(2024, 11, 29), date(2024, 12, 9), date(2024, 12, 10),
                date(2024, 12, 16), date(2024, 12, 23), date(2024, 12, 27), date(2024, 11, 21)):
        got = metrics.daily_metrics(corp_lake, day).to_pandas().set_index("symbol")
        want = closes[closes.day == day].set_index("symbol")  # daily_metrics names the ticker as traded
        assert sorted(got.index) == sorted(want.index)
        np.testing.assert_allclose(got.loc[want.index, "pct_change"], want["pct_change"], rtol=1e-9, atol=1e-12)
        assert got["pct_change"].abs().max() < 0.05


def test_no_unexplained_jumps_fires_on_an_unrecorded_split_only(tmp_path, corp_lake):
    for day in CORP_DAYS[1:]:
        assert _no_unexplained_jumps(corp_lake, day.isoformat()).passed, day
    missed = CORP_ACTIONS.filter(pc.not_equal(CORP_ACTIONS["action_id"], "split:BBB:2024-12-09"))
    lake = write_corp_lake(Lake(tmp_path / "lake"), corp_bars(), missed)
    outcome = _no_unexplained_jumps(lake, "2024-12-09")
    assert not outcome.passed and outcome.metrics["unexplained_jumps"] == 1
    assert "BBB" in outcome.summary and "2024-12-09" in outcome.summary
    assert outcome.examples.to_pylist()[0]["symbol"] == "BBB"
    assert outcome.examples.to_pylist()[0]["move"] == pytest.approx(9.0, rel=0.05)  # 1:10 reverse
    assert _no_unexplained_jumps(lake, "2024-11-25").passed  # AAA's split is recorded there


def test_no_unexplained_jumps_is_a_warning_check_of_minute_bars(monkeypatch):
    import dagster as dg

    for name in ("MARKET_DB_URL", "MARKET_ALERTS_WEBHOOK_URL", "MARKET_ALERTS_FILE"):
        monkeypatch.delenv(name, raising=False)
    from market_platform.definitions import defs

    graph = defs().resolve_asset_graph()
    key = dg.AssetCheckKey(dg.AssetKey("minute_bars"), "no_unexplained_jumps")
    assert key in graph.asset_check_keys
    assert not graph.get_check_spec(key).blocking


def test_no_unexplained_jumps_threshold_is_checked():
    with pytest.raises(ValueError, match="threshold"):
        quality.no_unexplained_jumps(schemas.BARS.empty_table(), schemas.BARS.empty_table(),
                                     adjust.DAY_ACTIONS.empty_table(), date(2024, 12, 9), threshold=0)


def test_chart_adjust(corp_lake, tmp_path, monkeypatch):
    raw = charts.load_bars(corp_lake, "AAA", CORP_DAYS[0], CORP_DAYS[-1], timeframe="1d")
    split = charts.load_bars(corp_lake, "AAA", CORP_DAYS[0], CORP_DAYS[-1], timeframe="1d", adjust="split")
    ratio = pc.divide(split["close"], raw["close"]).to_numpy()
    assert ratio[0] == pytest.approx(0.5) and ratio[-1] == 1.0
    renamed = charts.load_bars(corp_lake, "DDD", CORP_DAYS[0], CORP_DAYS[-1], timeframe="1d", adjust="all")
    assert renamed.num_rows == len(CORP_DAYS)
    info = charts.candles_chart(corp_lake, "DDD", CORP_DAYS[0], CORP_DAYS[-1], tmp_path / "ddd.png", timeframe="1d",
                                adjust="all")
    assert info.bars == len(CORP_DAYS) and info.description.endswith("adjust=all")
    with pytest.raises(InvalidInputError, match="adjust='raw'"):
        charts.load_bars(corp_lake, "AAA", CORP_DAYS[0], CORP_DAYS[-1], adjust="raw")


def test_query_cli_as_of(corp_lake, monkeypatch):
    monkeypatch.setenv("MARKET_LAKE_URL", str(corp_lake.url))
    counts = {}
    for as_of in ("2024-11-22", "2024-11-25", "2024-12-31"):
        result = CliRunner().invoke(main, ["query", "--as-of", as_of, "--format", "csv",
                                           "SELECT count(*) AS n FROM adjustment_factors"])
        assert result.exit_code == 0, result.output
        counts[as_of] = int(result.output.splitlines()[-1])
    # In effect by then: CCC's dividend; and AAA's split; and all seven ex-dates.
    assert counts == {"2024-11-22": 1, "2024-11-25": 2, "2024-12-31": 7}


def test_status_shows_renames_and_delistings(corp_lake, monkeypatch):
    monkeypatch.setenv("MARKET_LAKE_URL", str(corp_lake.url))
    shown = {t: CliRunner().invoke(main, ["status", t]) for t in ("DDD", "CCC", "EEE")}
    assert all(r.exit_code == 0 for r in shown.values()), {t: r.output for t, r in shown.items()}
    ddd = shown["DDD"].output
    assert "history: CCC until 2024-12-16 (exclusive); DDD from 2024-12-16 on" in ddd
    assert "bars traded as CCC" in ddd and "bars traded as DDD" in ddd
    assert "2024-11-18 14:30  2024-12-13 14:34" in ddd  # CCC's minute bars, labelled as such
    assert "renamed: trades as DDD from 2024-12-16" in shown["CCC"].output
    assert "delisted: no longer trades from 2024-12-20" in shown["EEE"].output


# -- the hybrid backfill across the 30-day boundary, with a split inside it -----------------------

#: NVDA's 10:1 split in the simulated market goes ex on 2024-06-10. With "today" 2024-07-06 the
#: sessions up to 06-05 are more than 30 days old (Flat Files) and the later ones recent (REST), so
#: REST serves two sessions before the split (raw only if asked adjusted=false) and two after.
HYBRID_DAYS = (date(2024, 6, 4), date(2024, 6, 5), date(2024, 6, 6), date(2024, 6, 7), date(2024, 6, 10),
               date(2024, 6, 11))
HYBRID_NOW = datetime(2024, 7, 6, 16, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def hybrid_replay(sim):
    from market_platform.replay import ReplayServers, SimProvider

    servers = ReplayServers(SimProvider(sim), flatfile_days=(HYBRID_DAYS[0], HYBRID_DAYS[-1]), clock=lambda: HYBRID_NOW,
                             bucket="flatfiles-hybrid")
    with servers:
        yield servers


def test_hybrid_backfill_with_a_split_is_raw_in_storage_and_continuous_adjusted(hybrid_replay, sim, tmp_path):
    from market_platform.history.bars import backfill_session
    from market_platform_tests.fixtures.history import replay_vendors

    vendors = replay_vendors(hybrid_replay).vendors()
    vendors.clock = lambda: HYBRID_NOW
    lake = Lake(tmp_path / "lake")
    symbols = ["NVDA", "MSFT"]
    sources = {}
    for day in HYBRID_DAYS:
        sources[day] = backfill_session(vendors, lake, day, symbols).source
        lake.write_partition("bars_1d", day, rollups.rollup(lake, day, "1d"))
    assert [sources[d] for d in HYBRID_DAYS] == ["polygon_flatfiles"] * 2 + ["polygon_rest"] * 4
    actions = sim.corporate_actions(HYBRID_DAYS[0], HYBRID_DAYS[-1], symbols=symbols)
    split = actions.filter(pc.equal(actions["action_type"], "split")).to_pylist()
    assert [(a["symbol"], a["ex_date"], a["split_from"], a["split_to"]) for a in split] == [
        ("NVDA", date(2024, 6, 10), 1.0, 10.0)]
    lake.write_partition("corporate_actions", {"source": "sim"}, actions)

    # Raw in storage, from both sources: the bars as traded, a tenth of the price from the ex-date.
    columns = ["symbol", "ts", "open", "high", "low", "close", "volume"]
    for day in HYBRID_DAYS:
        stored = lake.read_partition("minute_bars", day).select(columns)
        assert stored.equals(sim.minute_bars(day, symbols).select(columns)), day
    raw = adjust.bars_as_of("NVDA", HYBRID_DAYS[0], HYBRID_DAYS[-1], adjust="none", timeframe="1m", lake=lake)
    adjusted = adjust.bars_as_of("NVDA", HYBRID_DAYS[0], HYBRID_DAYS[-1], adjust="split", timeframe="1m", lake=lake)

    def overnight(table: pa.Table) -> list[float]:
        frame = table.to_pandas()
        by_day = frame.groupby("date").agg(first_open=("open", "first"), last_close=("close", "last"))
        return (by_day["first_open"].shift(-1) / by_day["last_close"] - 1).dropna().tolist()

    raw_moves, adjusted_moves = overnight(raw), overnight(adjusted)
    assert raw_moves[3] == pytest.approx(-0.9, abs=0.02)          # 06-07 -> 06-10: the split, as traded
    assert max(abs(m) for m in adjusted_moves) < 0.02             # adjusted: the market's moves only
    ratio = pc.divide(adjusted["close"], raw["close"]).to_numpy()
    before = pc.less(raw["date"], pa.scalar(date(2024, 6, 10), pa.date32())).to_numpy(zero_copy_only=False)
    np.testing.assert_allclose(ratio[before], 0.1, rtol=1e-12)
    np.testing.assert_allclose(ratio[~before], 1.0, rtol=1e-12)
    # The same across the boundary at the daily timeframe (the rollup of raw bars, adjusted at read).
    daily = adjust.bars_as_of("NVDA", HYBRID_DAYS[0], HYBRID_DAYS[-1], adjust="all", lake=lake)
    closes = daily["close"].to_numpy()
    assert len(closes) == len(HYBRID_DAYS) and np.max(np.abs(closes[1:] / closes[:-1] - 1)) < 0.05


def test_lineage_chains_renames_and_keeps_a_reused_ticker_apart():
    e1, e2, e3 = date(2020, 3, 2), date(2021, 6, 1), date(2023, 1, 3)
    rows = adjust.lineage([("B", "C", e2), ("A", "B", e1), ("A", "D", e3)]).to_pylist()
    assert [(r["traded_symbol"], r["first_day"], r["end_day"], r["symbol"]) for r in rows] == [
        ("A", date(1900, 1, 1), e1, "C"),   # A became B, then C: its history is C's
        ("B", e1, e2, "C"),
        ("A", e1, e3, "D"),                 # another listing took the ticker A, then became D
    ]


def test_a_dividend_after_a_gap_in_the_lake_uses_the_last_close_before_it(tmp_path, raw_frame):
    # AAA's dividend goes ex on 2024-12-10; the lake lacks 2024-12-09, the session before it.
    gap = date(2024, 12, 9)
    bars = corp_bars()
    day = pc.strftime(bars["ts"], format="%Y-%m-%d")  # UTC: 14:30 to 14:34, the New York day too
    lake = write_corp_lake(Lake(tmp_path / "lake"), bars.filter(pc.not_equal(day, gap.isoformat())))
    assert lake.count("bars_1d", gap) == 0
    got = adjust.bars_as_of("AAA", CORP_DAYS[0], CORP_DAYS[-1], adjust="all", timeframe="1m", lake=lake).to_pandas()
    kept = raw_frame[raw_frame.ts.dt.tz_convert("America/New_York").dt.date != gap]
    want = apply(reference_factors(kept, CORP_ACTIONS.to_pandas()), "all")
    want = want[want.lineage == "AAA"].sort_values("ts")
    assert len(got) == len(want) > 0
    np.testing.assert_allclose(got["close"], want["close"], rtol=1e-12)


def test_many_dividends_outside_the_lake_leave_its_factors_alone(tmp_path, reference):
    # 300 dividends of a ticker the lake does not hold, on sessions it does not hold either.
    days = calendar.sessions(date(2022, 1, 3), date(2024, 6, 28))[:300]
    extra = [{"action_id": schemas.action_id("dividend", "ZZZ", d, "CD"), "symbol": "ZZZ", "action_type": "dividend",
              "ex_date": d, "announced_date": d, "cash_amount": 0.1, "dividend_type": "CD", "source": "sim"}
             for d in days]
    actions = pa.concat_tables([CORP_ACTIONS, schemas.conform(
        pa.Table.from_pylist(extra, schema=schemas.CORPORATE_ACTIONS.remove_metadata()), schemas.CORPORATE_ACTIONS)])
    lake = write_corp_lake(Lake(tmp_path / "lake"), corp_bars(), actions)
    got = query.query("SELECT symbol, ex_date, all_factor FROM adjustment_factors WHERE symbol <> 'ZZZ' "
                      "ORDER BY symbol, ex_date", lake=lake)
    assert got.equals(query.query("SELECT symbol, ex_date, all_factor FROM adjustment_factors ORDER BY symbol, ex_date",
                                  lake=write_corp_lake(Lake(tmp_path / "plain"), corp_bars())))


def test_factors_are_computed_again_after_any_write(tmp_path):
    # install keeps its factors per state of the lake's files: a rewrite at once, of the same size,
    # of the close a dividend is priced by or of the actions, is seen by the next read.
    lake = write_corp_lake(Lake(tmp_path / "lake"), corp_bars())
    sql = "SELECT symbol, ex_date, all_factor FROM adjustment_factors ORDER BY symbol, ex_date"
    first = query.query(sql, lake=lake)
    assert query.query(sql, lake=lake).equals(first)
    before = date(2024, 12, 9)  # the session before AAA's dividend
    daily = lake.read_partition("bars_1d", before)
    doubled = pc.if_else(pc.equal(daily["symbol"], "AAA"), pc.multiply(daily["close"], 2.0), daily["close"])
    lake.write_partition("bars_1d", before, daily.set_column(daily.schema.get_field_index("close"), "close", doubled))
    second = query.query(sql, lake=lake)
    changed = [r["symbol"] for r, s in zip(first.to_pylist(), second.to_pylist()) if r != s]
    assert changed and set(changed) == {"AAA"}
    actions = lake.read_partition(adjust.ACTIONS, {"source": "sim"})
    cash = pc.if_else(pc.equal(actions["symbol"], "AAA"), pc.multiply(actions["cash_amount"], 0.5), actions["cash_amount"])
    lake.write_partition(adjust.ACTIONS, {"source": "sim"},
                         actions.set_column(actions.schema.get_field_index("cash_amount"), "cash_amount", cash))
    third = query.query(sql, lake=lake)
    assert third.num_rows == second.num_rows and not third.equals(second)
    adjust._CACHE.clear()
    assert query.query(sql, lake=lake).equals(third)
