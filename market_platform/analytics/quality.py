"""Data-quality checks of stored bars and quotes, each proving one property, computed by DuckDB.

Every check returns a `CheckOutcome`: passed or not, a one-line summary, and figures for the UI
(counts, shares, a markdown table of examples). The Dagster checks in `defs/bars/checks.py` and
`defs/metrics/checks.py` are thin wrappers.

`session_complete` — what "complete" means. The calendar gives each phase's expected minutes (a
half day's regular session is 210 minutes, its after-hours 240). A source has no bar for a minute
without trades, so a thinly traded symbol has honest holes; judging every symbol against every
minute would fail every healthy day. Two coverages are judged instead:

- *liquid symbols in the regular session*: a symbol is liquid when its bars average at least
  `liquid_trades_per_minute` trades (trades / minutes with a bar: a figure that lost data does
  not lower, unlike a coverage-based one). For such a symbol an empty minute is rare (Poisson:
  e^-5 < 1% at 5 trades a minute), so its coverage (minutes with a bar / expected minutes)
  should be near 1. The score `completeness_symbols_regular` is their covered minutes over their
  expected minutes. Extended hours are not judged per symbol: their activity swings too much
  within the phase (04:00 is far thinner than 09:00) for an average to say which minute should
  have had a trade. Without trade counts, liquidity falls back to covering half the session.
- *the market in each phase*: the share of the phase's minutes with a bar of any symbol
  (`completeness_market_<phase>`), judged when the phase averages at least
  `dense_market_trades_per_minute` trades a minute (a full universe does; a test-sized one may
  not), or when the phase has no bar at all (a truncated file).

The check fails when any judged score is below `min_score`; `completeness` is the lowest judged
score, and the least covered liquid symbols are listed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from market_platform import calendar

EXAMPLES = 10


@dataclass(frozen=True)
class CheckOutcome:
    """The result of one check: whether it passed, why, and figures to show."""

    passed: bool
    summary: str
    metrics: dict[str, Any] = field(default_factory=dict)
    examples: pa.Table | None = None  # offending rows, at most EXAMPLES

    def examples_markdown(self) -> str | None:
        if self.examples is None or self.examples.num_rows == 0:
            return None
        return self.examples.to_pandas().to_markdown(index=False)


def _run(table: pa.Table, query: str, params: dict | None = None, **tables: pa.Table) -> pa.Table:
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.register("t", table)
        for name, other in tables.items():
            con.register(name, other)
        return con.sql(query, params=params or {}).to_arrow_table()
    finally:
        con.close()


def ohlc_consistent(bars: pa.Table) -> CheckOutcome:
    """Every bar has low <= open, close <= high, positive prices and volume >= 0."""
    bad = _run(bars, """
        SELECT symbol, ts, open, high, low, close, volume FROM t
        WHERE NOT (low <= open AND low <= close AND open <= high AND close <= high AND low <= high
                   AND low > 0 AND volume >= 0)
           OR open IS NULL OR high IS NULL OR low IS NULL OR close IS NULL OR volume IS NULL
           OR isnan(open) OR isnan(high) OR isnan(low) OR isnan(close) OR isnan(volume)
        ORDER BY symbol, ts""")
    n = bad.num_rows
    return CheckOutcome(
        passed=n == 0,
        summary=f"{n} of {bars.num_rows} bars break low <= open, close <= high, volume >= 0" if n
        else f"all {bars.num_rows} bars consistent",
        metrics={"bars": bars.num_rows, "inconsistent_bars": n},
        examples=bad.slice(0, EXAMPLES),
    )


def no_duplicate_bars(bars: pa.Table, keys: tuple[str, ...] = ("symbol", "ts", "source")) -> CheckOutcome:
    """No two bars share the key (symbol, ts, source)."""
    cols = ", ".join(f'"{k}"' for k in keys)  # keys are schema column names, not user input
    dup = _run(bars, f"SELECT {cols}, count(*) AS copies FROM t GROUP BY ALL HAVING count(*) > 1 ORDER BY ALL")
    extra = int(sum(dup["copies"].to_pylist()) - dup.num_rows) if dup.num_rows else 0
    return CheckOutcome(
        passed=dup.num_rows == 0,
        summary=f"{dup.num_rows} keys ({', '.join(keys)}) repeat, {extra} extra rows" if dup.num_rows
        else f"no key ({', '.join(keys)}) repeats in {bars.num_rows} bars",
        metrics={"bars": bars.num_rows, "duplicate_keys": dup.num_rows, "extra_rows": extra},
        examples=dup.slice(0, EXAMPLES),
    )


def session_complete(
    bars: pa.Table,
    day: date | str,
    *,
    liquid_trades_per_minute: float = 5.0,
    dense_market_trades_per_minute: float = 50.0,
    min_score: float = 0.95,
) -> CheckOutcome:
    """Coverage of the calendar's expected minutes, per phase (see the module docstring)."""
    session = calendar.session(day)
    expected = {phase: session.expected_minutes(phase) for phase in calendar.PHASES}
    params = {"start": session.start, "end": session.end,
              "regular_open": session.regular_open, "regular_close": session.regular_close}
    phased = """
        WITH b AS (
            SELECT DISTINCT ON (symbol, ts) symbol, CAST(ts AS TIMESTAMPTZ) AS ts, trade_count FROM t
            WHERE CAST(ts AS TIMESTAMPTZ) >= $start AND CAST(ts AS TIMESTAMPTZ) < $end
        )
        SELECT *, CASE WHEN ts < $regular_open THEN 'premarket'
                       WHEN ts < $regular_close THEN 'regular' ELSE 'afterhours' END AS phase
        FROM b"""
    market = {row["phase"]: row for row in _run(bars, f"""
        SELECT phase, count(DISTINCT ts) AS minutes, sum(trade_count) / count(DISTINCT ts) AS trades_per_minute
        FROM ({phased}) GROUP BY phase""", params).to_pylist()}
    symbols = _run(bars, f"""
        SELECT symbol, count(*) AS minutes, $expected AS expected, count(*) / $expected AS coverage,
               sum(trade_count) / count(*) AS trades_per_minute, count(trade_count) = count(*) AS counted
        FROM ({phased}) WHERE phase = 'regular' GROUP BY symbol""",
                   {**params, "expected": expected["regular"]})
    # Liquid: enough trades per traded minute that an empty minute is rare; without trade counts,
    # at least half the regular session covered.
    liquid = _run(symbols, """
        SELECT symbol, minutes, expected, round(coverage, 4) AS coverage, trades_per_minute FROM t
        WHERE CASE WHEN counted THEN trades_per_minute >= $lt ELSE coverage >= 0.5 END
        ORDER BY coverage, symbol""", {"lt": liquid_trades_per_minute})
    metrics: dict[str, Any] = {"half_day": session.is_half_day, "liquid_symbols": liquid.num_rows}
    scores: dict[str, float | None] = {}
    covered = sum(liquid["minutes"].to_pylist())
    scores["symbols_regular"] = covered / (liquid.num_rows * expected["regular"]) if liquid.num_rows else None
    for phase in calendar.PHASES:
        row = market.get(phase, {"minutes": 0, "trades_per_minute": None})
        coverage = row["minutes"] / expected[phase]
        dense = row["trades_per_minute"] is not None and row["trades_per_minute"] >= dense_market_trades_per_minute
        metrics[f"expected_minutes_{phase}"] = expected[phase]
        metrics[f"market_coverage_{phase}"] = coverage
        # A phase with no bars at all is a loss whatever its usual density (a truncated file).
        scores[f"market_{phase}"] = coverage if dense or row["minutes"] == 0 else None
    judged = {name: score for name, score in scores.items() if score is not None}
    failing = sorted(name for name, score in judged.items() if score < min_score)
    metrics.update({f"completeness_{name}": score for name, score in scores.items()})
    metrics["completeness"] = min(judged.values()) if judged else None
    text = ", ".join(f"{name} {score:.3f}" for name, score in judged.items()) or "nothing dense enough to judge"
    return CheckOutcome(
        passed=not failing,
        summary=(f"incomplete: {', '.join(failing)} below {min_score}; " if failing else "complete: ") + text
        + f" ({liquid.num_rows} liquid symbols)",
        metrics=metrics,
        examples=liquid.slice(0, EXAMPLES) if liquid.num_rows else None,
    )


#: A raw move from one session's last close to the next one's first open beyond this share is a
#: jump: a 3:2 split is -33%, a 2:1 one -50%; ordinary overnight gaps are far smaller.
JUMP_THRESHOLD = 0.25


def no_unexplained_jumps(
    bars: pa.Table, previous: pa.Table, actions: pa.Table, day: date, *, threshold: float = JUMP_THRESHOLD
) -> CheckOutcome:
    """No symbol's raw price moves from the previous session's last close (`previous`, its minute
    bars) to session `day`'s first open (`bars`) by more than `threshold` (a share: 0.25 = 25%)
    without a corporate action on `day` explaining it (`actions`: `adjust.day_actions(lake, day)`,
    any split, dividend or rename taking effect on `day`). A jump with none is a split or other
    action the platform missed: adjusted reads would be wrong across it. Jumps are listed."""
    if threshold <= 0:
        raise ValueError(f"threshold={threshold!r}: expected a positive share, e.g. 0.25")
    found = _run(bars, """
        WITH first AS (SELECT symbol, arg_min(open, ts) AS open FROM t GROUP BY symbol),
             last AS (SELECT symbol, arg_max(close, ts) AS close FROM previous GROUP BY symbol),
             moves AS (SELECT f.symbol, l.close AS prev_close, f.open, f.open / l.close - 1 AS move
                       FROM first f JOIN last l USING (symbol))
        SELECT m.symbol, $day AS day, m.prev_close, m.open, m.move, a.symbol IS NOT NULL AS explained
        FROM moves m LEFT JOIN actions a USING (symbol)
        WHERE abs(m.move) > $threshold
        ORDER BY explained, abs(m.move) DESC, m.symbol""",
        {"threshold": threshold, "day": day}, previous=previous, actions=actions)
    unexplained = found.filter(pc.invert(found["explained"]))
    n = unexplained.num_rows
    names = ", ".join(f"{s} ({m:+.1%})" for s, m in zip(unexplained["symbol"].to_pylist()[:EXAMPLES],
                                                       unexplained["move"].to_pylist()))
    return CheckOutcome(
        passed=n == 0,
        summary=(f"{n} unexplained jump{'s' if n != 1 else ''} on {day}: {names}; no corporate action recorded "
                 "(a missed split? refresh corporate_actions)" if n else
                 f"no unexplained jump on {day} ({found.num_rows} explained by corporate actions)"),
        metrics={"unexplained_jumps": n, "explained_jumps": found.num_rows - n, "threshold": threshold},
        examples=unexplained.drop_columns(["explained"]).slice(0, EXAMPLES),
    )


def quotes_not_crossed(quotes: pa.Table, *, max_share: float = 0.0) -> CheckOutcome:
    """The share of quotes with bid > ask (crossed) is at most `max_share`; locked quotes (bid ==
    ask) are allowed, and one-sided quotes (a zero price on one side) are not judged."""
    stats = _run(quotes, """
        SELECT count(*) AS quotes,
               count(*) FILTER (WHERE bid_price > 0 AND ask_price > 0) AS two_sided,
               count(*) FILTER (WHERE bid_price > ask_price AND bid_price > 0 AND ask_price > 0) AS crossed,
               count(*) FILTER (WHERE bid_price = ask_price AND bid_price > 0) AS locked
        FROM t""").to_pylist()[0]
    examples = _run(quotes, """
        SELECT symbol, ts, bid_price, ask_price, bid_exchange, ask_exchange FROM t
        WHERE bid_price > ask_price AND bid_price > 0 AND ask_price > 0 ORDER BY symbol, ts LIMIT $n""",
                    {"n": EXAMPLES})
    share = stats["crossed"] / stats["two_sided"] if stats["two_sided"] else 0.0
    return CheckOutcome(
        passed=share <= max_share,
        summary=f"{stats['crossed']} of {stats['two_sided']} two-sided quotes crossed ({share:.6%}, "
                f"allowed {max_share:.6%})",
        metrics={**stats, "crossed_share": share, "max_share": max_share},
        examples=examples,
    )


#: `sources_agree` tolerances. Prices: vendors round and time-stamp trades alike, so 0.5% is already
#: a real difference. Volume: vendors drop different trade conditions (odd lots, corrections,
#: late reports) from their bars, so a minute's volume may differ by a few percent; beyond 5%, and
#: beyond one round lot (100 shares), the two sides saw different trades: another feed (IEX sees
#: a few percent of the consolidated SIP volume) or another market.
PRICE_TOLERANCE = 0.005
VOLUME_TOLERANCE = 0.05
VOLUME_SLACK = 100.0


def sources_agree(
    left: pa.Table,
    right: pa.Table,
    *,
    price_tolerance: float = PRICE_TOLERANCE,
    volume_tolerance: float | None = VOLUME_TOLERANCE,
    volume_slack: float = VOLUME_SLACK,
    max_share: float = 0.01,
) -> CheckOutcome:
    """Bars of two sources for the same minutes agree: open, high, low and close within a relative
    `price_tolerance`, and volume within `volume_tolerance` of the larger side or `volume_slack`
    shares, whichever is larger (None: volume not compared); see the constants above. Minutes that
    only one side has are counted, not judged. Fails when more than `max_share` of the matched bars
    disagree in price or in volume."""
    result = _run(left, """
        WITH l AS (SELECT DISTINCT ON (symbol, ts) * FROM t ORDER BY symbol, ts, source),
             r AS (SELECT DISTINCT ON (symbol, ts) * FROM other ORDER BY symbol, ts, source),
        j AS (
            SELECT l.symbol, l.ts, l.source AS left_source, r.source AS right_source,
                   l.open AS left_open, r.open AS right_open, l.high AS left_high, r.high AS right_high,
                   l.low AS left_low, r.low AS right_low, l.close AS left_close, r.close AS right_close,
                   l.volume AS left_volume, r.volume AS right_volume,
                   greatest(abs(l.open - r.open) / r.open, abs(l.high - r.high) / r.high,
                            abs(l.low - r.low) / r.low, abs(l.close - r.close) / r.close) AS price_diff,
                   abs(l.volume - r.volume) / greatest(l.volume, r.volume, 1e-12) AS volume_diff,
                   coalesce($vt IS NOT NULL AND abs(l.volume - r.volume)
                            > greatest(coalesce($vt, 0) * greatest(l.volume, r.volume), $vs), false) AS volume_off
            FROM l JOIN r USING (symbol, ts)
        )
        SELECT *, price_diff > $pt AS price_off, price_diff > $pt OR volume_off AS disagrees FROM j
        ORDER BY price_diff DESC, volume_diff DESC, symbol, ts""",
                  {"pt": price_tolerance, "vt": volume_tolerance, "vs": volume_slack}, other=right)
    matched = result.num_rows
    disagreeing = result.filter(result["disagrees"]) if matched else result
    in_price = result.filter(result["price_off"]).num_rows if matched else 0
    in_volume = result.filter(result["volume_off"]).num_rows if matched else 0
    counts = _run(left, """
        SELECT (SELECT count(*) FROM (SELECT DISTINCT symbol, ts FROM t)) AS left_bars,
               (SELECT count(*) FROM (SELECT DISTINCT symbol, ts FROM other)) AS right_bars""",
                  other=right).to_pylist()[0]
    n = disagreeing.num_rows
    share = n / matched if matched else 0.0
    limits = f"{price_tolerance:.2%} in price" + (
        f" or {volume_tolerance:.0%} (and {volume_slack:g} shares) in volume" if volume_tolerance is not None else "")
    return CheckOutcome(
        passed=share <= max_share,
        summary=(f"{n} of {matched} matched bars disagree beyond {limits} ({in_price} in price, {in_volume} in volume)"
                 if matched else "no minute in common: nothing to compare"),
        metrics={**counts, "matched_bars": matched, "disagreeing_bars": n, "disagreeing_share": share,
                 "price_disagreeing_bars": in_price, "volume_disagreeing_bars": in_volume,
                 "left_only_bars": counts["left_bars"] - matched, "right_only_bars": counts["right_bars"] - matched,
                 "price_tolerance": price_tolerance, "volume_tolerance": volume_tolerance},
        examples=disagreeing.select(["symbol", "ts", "left_source", "right_source", "left_close", "right_close",
                                     "left_volume", "right_volume", "price_diff", "volume_diff"]).slice(0, EXAMPLES)
        if matched else None,
    )


#: Default allowed lag of each live table's newest row behind now, while a session runs.
FRESHNESS_LAG = {"bars_1m": timedelta(minutes=3), "quotes": timedelta(minutes=1), "trades": timedelta(minutes=2)}


def live_fresh(store, *, now: datetime | None = None, max_lag: dict[str, timedelta] | None = None) -> CheckOutcome:
    """During a session (pre-market to after-hours), each live table of `max_lag` (default
    `FRESHNESS_LAG`: bars_1m, quotes, trades) has a newest row no older than its lag; outside sessions the check passes with nothing to judge.
    The first minutes of a session get the lag as grace, counted from the session's start."""
    from psycopg import sql

    now = now or datetime.now(timezone.utc)
    session = calendar.default_calendar().session_at(now)
    if session is None:
        return CheckOutcome(True, f"no session at {now.isoformat()}: live tables not judged", {"in_session": False})
    lags = dict(max_lag) if max_lag else dict(FRESHNESS_LAG)
    metrics: dict[str, Any] = {"in_session": True}
    stale = []
    for table, allowed in lags.items():
        # Look back a few lags only: the BRIN index on ts turns that into a scan of the last few
        # minutes' blocks, not of the day's partition. Nothing in that window is stale anyway.
        # (A second column keeps the CSV line of an all-null row from reading as a blank line.)
        since = max(session.start, now - 4 * allowed)
        newest = store.read_arrow(
            sql.SQL("SELECT max(ts) AS newest, 1 AS one FROM {} WHERE ts >= %s AND ts <= %s").format(
                sql.Identifier(table)),
            (since, now),
        )["newest"][0].as_py()
        reference = newest or session.start
        lag = (now - reference).total_seconds()
        metrics[f"{table}_newest"] = newest.isoformat() if newest else None
        metrics[f"{table}_lag_seconds"] = round(lag, 1)
        if lag > allowed.total_seconds():
            stale.append(f"{table} {lag:.0f}s behind (allowed {allowed.total_seconds():.0f}s)")
    return CheckOutcome(
        passed=not stale,
        summary="stale: " + "; ".join(stale) if stale else "live tables fresh",
        metrics=metrics,
    )
